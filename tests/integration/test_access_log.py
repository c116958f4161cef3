"""The access log: one JSON line per request with the contract's fields, and correct values."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.fixtures.gateway import ACCESS_LOG_KEYS, route, service
from tests.fixtures.rawhttp import RawConnection


@pytest.fixture
def gw(gateway, httpbin, scripted, refusing_port):
    return gateway({"services": [
        service("httpbin", httpbin.url, [route("r1", ["/bin"])]),
        service("scripted", scripted.url, [route("r2", ["/s"])]),
        service("down", refusing_port.url, [route("r3", ["/down"])], retries=0),
    ]})


def _send(gw, method, target, body=None, host="logs.example"):
    with RawConnection(gw.host, gw.port) as c:
        c.request(method, target, [("User-Agent", "log-test")], body, host=host)
        return c.read_response(method)


def _parse_time(v) -> float:
    if isinstance(v, (int, float)):
        return float(v) / (1000.0 if v > 1e11 else 1.0)
    return dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()


def test_fields_for_proxied_request(gw, httpbin):
    t_before = time.time()
    r = _send(gw, "GET", "/bin/get")
    assert r.status == 200
    e = gw.log_for(r.header("x-request-id"))
    missing = [k for k in ACCESS_LOG_KEYS if k not in e]
    assert not missing, f"access log line lacks {missing}: {e}"
    assert e["client_ip"] == "127.0.0.1"
    assert e["method"] == "GET"
    assert e["host"] == "logs.example"
    assert e["path"] == "/bin/get"
    assert e["route"] == "r1"
    assert e["service"] == "httpbin"
    assert e["upstream"] == httpbin.hostport
    assert e["status"] == 200
    assert isinstance(e["bytes_in"], int) and e["bytes_in"] >= 0
    assert isinstance(e["bytes_out"], int) and len(r.body) <= e["bytes_out"] <= len(r.body) + 8192
    assert isinstance(e["latency_ms"], (int, float)) and isinstance(e["upstream_latency_ms"], (int, float))
    assert 0 <= e["upstream_latency_ms"] <= e["latency_ms"] < 5000
    assert t_before - 2 <= _parse_time(e["time"]) <= time.time() + 2


def test_one_line_per_request(gw, token):
    ids = []
    with RawConnection(gw.host, gw.port) as c:
        for i in range(5):
            c.request("GET", f"/s/echo?t={token}&i={i}")
            ids.append(c.read_response().header("x-request-id"))
    for rid in ids:
        gw.log_for(rid)
    lines = gw.access_log_lines()
    for rid in ids:
        assert sum(1 for e in lines if e.get("request_id") == rid) == 1


def test_bytes_in_counts_request_body(gw, token):
    body = b"b" * 100000
    r = _send(gw, "POST", f"/s/sink?t={token}", body)
    assert r.status == 200
    e = gw.log_for(r.header("x-request-id"))
    assert len(body) <= e["bytes_in"] <= len(body) + 8192
    assert e["method"] == "POST" and e["route"] == "r2" and e["service"] == "scripted"


def test_bytes_out_counts_response_body(gw, token):
    r = _send(gw, "GET", f"/s/gen?n=300000&t={token}")
    e = gw.log_for(r.header("x-request-id"))
    assert 300000 <= e["bytes_out"] <= 300000 + 8192


def test_latency_covers_slow_body(gw):
    """httpbin's /drip takes ~0.6 s to send its body: the request latency includes it."""
    r = _send(gw, "GET", "/bin/drip?numbytes=3&duration=0.6&delay=0")
    assert r.status == 200 and r.body == b"***"
    e = gw.log_for(r.header("x-request-id"))
    assert e["latency_ms"] >= 350, e


def test_no_route_logged(gw):
    r = _send(gw, "GET", "/nowhere")
    assert r.status == 404
    e = gw.log_for(r.header("x-request-id"))
    assert e["status"] == 404 and e["path"] == "/nowhere"
    assert e["route"] in (None, "") and e["service"] in (None, "") and e["upstream"] in (None, "")


def test_upstream_error_logged(gw, refusing_port):
    r = _send(gw, "GET", "/down/x")
    assert r.status == 502
    e = gw.log_for(r.header("x-request-id"))
    assert e["status"] == 502 and e["route"] == "r3" and e["service"] == "down"
    assert e["upstream"] in (None, "", f"127.0.0.1:{refusing_port.port}")


def test_path_with_query(gw, token):
    r = _send(gw, "GET", f"/s/echo?t={token}&x=1")
    e = gw.log_for(r.header("x-request-id"))
    assert e["path"] in ("/s/echo", f"/s/echo?t={token}&x=1")


def test_access_log_stdout(gateway, scripted, token):
    gw = gateway({"gateway": {"access_log": "stdout"},
                  "services": [service("scripted", scripted.url, [route("r", ["/"], strip_path=False)])]})
    r = _send(gw, "GET", f"/echo?t={token}")
    e = gw.log_for(r.header("x-request-id"))
    assert e["status"] == 200 and e["route"] == "r"


def test_access_log_off(gateway, scripted, tmp_path, token):
    gw = gateway({"gateway": {"access_log": "off"},
                  "services": [service("scripted", scripted.url, [route("r", ["/"], strip_path=False)])]})
    r = _send(gw, "GET", f"/echo?t={token}")
    assert r.status == 200
    # nothing on stdout either: give the gateway a chance to (wrongly) write, by making another request
    _send(gw, "GET", f"/echo?t={token}")
    assert not [ln for ln in gw.stdout_path.read_text().splitlines() if '"request_id"' in ln]


def test_client_abort_logged_499(gw, scripted, token):
    """A client that leaves before its response is logged with nginx's 499."""
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/s/{token}/hang?t={token}&max=30")
        scripted.request_for(token)
    e = gw.wait_log(lambda e: token in str(e.get("path")), timeout=10, what="log line for the aborted request")
    assert e["status"] == 499 and e["route"] == "r2"
