"""Errors the gateway produces itself: no route (404), upstream unreachable or broken (502), upstream too slow (504).

Each is a JSON body ``{"message": ..., "request_id": ...}`` whose id matches the ``X-Request-ID`` header.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures.gateway import route, service, single_service
from tests.fixtures.rawhttp import PeerClosed, RawConnection
from tests.fixtures.upstreams import BlackholePort


def assert_json_error(r, status):
    assert r.status == status, f"expected {status}, got {r.status}: {r.body[:300]!r}"
    ctype = r.header("content-type") or ""
    assert ctype.startswith("application/json"), f"content-type {ctype!r}"
    doc = json.loads(r.body)
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    assert doc.get("request_id") == r.header("x-request-id"), (doc, r.headers)
    assert r.header("content-length") == str(len(r.body)) or r.framing == "chunked"
    return doc


def _get(gw, target, method="GET", headers=(), body=None, timeout=10):
    with RawConnection(gw.host, gw.port, timeout=timeout) as c:
        c.request(method, target, list(headers), body)
        return c.read_response(method)


# -- 404 -------------------------------------------------------------------------------------------------------

@pytest.fixture
def narrow_gw(shared_gateway, scripted):
    return shared_gateway({"services": [service("scripted", scripted.url, [
        route("only", ["/only"]),
        route("by-host", ["/h"], hosts=["api.example"]),
        route("by-method", ["/m"], methods=["POST"]),
    ])]})


@pytest.mark.parametrize("target", ["/", "/nope", "/onl", "/Only", "/h/x", "/m"])
def test_no_route_404(narrow_gw, target):
    r = _get(narrow_gw, target)
    assert_json_error(r, 404)


def test_no_route_head_has_no_body(narrow_gw):
    r = _get(narrow_gw, "/nope", "HEAD")
    assert r.status == 404 and r.body == b""


def test_no_route_keeps_connection(narrow_gw, token):
    with RawConnection(narrow_gw.host, narrow_gw.port) as c:
        c.request("GET", "/nope")
        r = c.read_response()
        assert_json_error(r, 404)
        assert "close" not in r.connection_tokens()
        c.request("GET", f"/only/echo?t={token}")
        assert c.read_response().status == 200


def test_no_route_with_request_body(narrow_gw, token):
    """The unread body must be skipped (connection stays in sync) or the connection closed, announced."""
    with RawConnection(narrow_gw.host, narrow_gw.port) as c:
        c.request("POST", "/nope", [("Content-Type", "text/plain")], b"a body the gateway must skip")
        r = c.read_response("POST")
        assert_json_error(r, 404)
        if "close" in r.connection_tokens():
            assert c.peer_closed(5)
            return
        c.request("GET", f"/only/echo?t={token}")
        assert c.read_response().status == 200, "connection out of sync after a 404 with a request body"


def test_routes_that_do_match(narrow_gw, token):
    assert _get(narrow_gw, f"/only/echo?t={token}").status == 200
    assert _get(narrow_gw, f"/h/echo?t={token}", headers=[("Host", "api.example")]).status == 200
    assert _get(narrow_gw, f"/m/echo?t={token}", "POST", body=b"").status == 200


# -- 502 -------------------------------------------------------------------------------------------------------

def test_upstream_refused_502(gateway, refusing_port):
    gw = gateway(single_service(refusing_port.url, name="down", retries=0))
    t0 = time.monotonic()
    r = _get(gw, "/anything")
    assert_json_error(r, 502)
    assert time.monotonic() - t0 < 3, "a refused connection should fail fast"


def test_upstream_refused_with_retries_still_502(gateway, refusing_port):
    gw = gateway(single_service(refusing_port.url, name="down"))
    assert_json_error(_get(gw, "/anything"), 502)


@pytest.mark.parametrize("action", ["reset", "garbage"])
def test_upstream_broken_502(gateway, scripted, token, action):
    gw = gateway(single_service(scripted.url, name="scripted", retries=0))
    r = _get(gw, f"/{action}?t={token}")
    assert_json_error(r, 502)


def test_502_keeps_client_connection_usable(gateway, scripted, refusing_port, token):
    cfg = {"services": [
        service("down", refusing_port.url, [route("down", ["/down"])], retries=0),
        service("up", scripted.url, [route("up", ["/up"])]),
    ]}
    gw = gateway(cfg)
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", "/down/x")
        assert_json_error(c.read_response(), 502)
        c.request("GET", f"/up/echo?t={token}")
        assert c.read_response().status == 200


# -- 504 -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "POST"])
def test_upstream_read_timeout_504(gateway, scripted, token, method):
    gw = gateway(single_service(scripted.url, name="slow", retries=0, read_timeout=500))
    t0 = time.monotonic()
    r = _get(gw, f"/hang?t={token}", method, body=b"x" if method == "POST" else None)
    elapsed = time.monotonic() - t0
    assert_json_error(r, 504)
    assert 0.45 <= elapsed < 2.0, f"504 after {elapsed:.2f}s, read_timeout is 0.5s"


def test_upstream_connect_timeout_504(gateway):
    hole = BlackholePort()
    try:
        if not hole.works():
            pytest.skip("this kernel does not drop SYNs to a full accept queue")
        gw = gateway(single_service(hole.url, name="hole", retries=0, connect_timeout=400))
        t0 = time.monotonic()
        r = _get(gw, "/x")
        elapsed = time.monotonic() - t0
        assert_json_error(r, 504)
        assert 0.35 <= elapsed < 2.0, f"504 after {elapsed:.2f}s, connect_timeout is 0.4s"
    finally:
        hole.close()


def test_timeout_mid_body_closes_client_connection(gateway, scripted, token):
    """Once the head is sent there is no status left to change: the gateway must cut the response short (close)
    rather than pretend it is complete."""
    gw = gateway(single_service(scripted.url, name="slow", retries=0, read_timeout=500))
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        t0 = time.monotonic()
        c.request("GET", f"/slow-body?n=10000&t={token}")
        head = c.read_head()
        assert head.status == 200
        with pytest.raises(PeerClosed):
            c.read_body(head)
        assert time.monotonic() - t0 < 3


def test_upstream_5xx_relayed_not_replaced(shared_gateway, scripted, token):
    gw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))
    r = _get(gw, f"/respond?t={token}&status=503&body=upstream%20says%20no&h=Retry-After:7")
    assert r.status == 503 and r.body == b"upstream says no" and r.header("retry-after") == "7"


def test_read_timeout_is_between_reads_not_total(gateway, httpbin):
    """Kong's read_timeout bounds the wait between two reads: a body that trickles a byte every 0.3 s for 1.5 s
    passes under a 0.8 s read_timeout."""
    gw = gateway(single_service(httpbin.url, name="drip", retries=0, read_timeout=800))
    r = _get(gw, "/drip?numbytes=5&duration=1.5&delay=0")
    assert r.status == 200 and r.body == b"*****"


def test_upstream_write_timeout_504(gateway, scripted, token):
    """The upstream stops reading the request body: once the buffers are full, the gateway gives up after
    write_timeout with a 504 (no response head has been sent yet)."""
    import threading

    gw = gateway(single_service(scripted.url, name="stuck", retries=0, write_timeout=500, read_timeout=60000))
    n = 256 << 20
    c = RawConnection(gw.host, gw.port, timeout=8)
    done = threading.Event()

    def send():
        try:
            c.send(f"POST /sink?gate={token}&t={token} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode())
            chunk = b"w" * (1 << 20)
            for _ in range(n >> 20):
                c.sock.sendall(chunk)
        except OSError:
            pass  # the gateway gave up and closed: expected
        finally:
            done.set()

    t = threading.Thread(target=send, daemon=True)
    try:
        t0 = time.monotonic()
        t.start()
        r = c.read_response("POST")
        elapsed = time.monotonic() - t0
        assert_json_error(r, 504)
        assert elapsed < 5, f"504 after {elapsed:.2f}s with write_timeout 0.5s"
    finally:
        c.close()
        scripted.open_gate(token)
        done.wait(10)
