"""The ``gateway:`` block's settings, observed from outside: header names, limits, client and upstream keep-alive."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.fixtures.gateway import route, service, single_service
from tests.fixtures.rawhttp import RawConnection


def _svc(scripted, **gw_settings):
    return single_service(scripted.url, name="scripted", route_name="all", gateway=gw_settings)


def _get(gw, target, headers=()):
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", target, list(headers))
        return c.read_response()


def test_via_header_off(gateway, scripted, token):
    gw = gateway(_svc(scripted, via_header=False))
    r = _get(gw, f"/echo?t={token}")
    assert r.status == 200 and not r.header_all("via")
    assert not scripted.request_for(token).header_all("via")


def test_request_id_header_name(gateway, scripted, token):
    gw = gateway(_svc(scripted, request_id_header="X-Correlation-ID"))
    r = _get(gw, f"/echo?t={token}")
    rid = r.header_all("x-correlation-id")
    assert len(rid) == 1 and not r.header_all("x-request-id")
    assert scripted.request_for(token).header_all("x-correlation-id") == rid
    assert gw.log_for(rid[0])["status"] == 200


def test_client_keepalive_timeout(gateway, scripted, token):
    gw = gateway(_svc(scripted, keepalive_timeout=0.5))
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/echo?t={token}")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.peer_closed(5), "idle client connection not closed after keepalive_timeout"
        elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 3, f"closed after {elapsed:.2f}s, keepalive_timeout is 0.5s"


def test_upstream_keepalive_max_requests(gateway, scripted, token):
    gw = gateway(_svc(scripted, upstream_keepalive_max_requests=3))
    with RawConnection(gw.host, gw.port) as c:
        for i in range(7):
            c.request("GET", f"/echo?t={token}&i={i}")
            assert c.read_response().status == 200
    per_conn = sorted(Counter(r.conn_id for r in scripted.wait_request(token, 7)).values(), reverse=True)
    assert per_conn == [3, 3, 1], f"requests per upstream connection: {per_conn}"


def test_upstream_keepalive_idle_timeout(gateway, scripted, token):
    gw = gateway(_svc(scripted, upstream_keepalive_idle_timeout=0.3))
    r = _get(gw, f"/echo?t={token}")
    assert r.status == 200
    conn_id = scripted.request_for(token).conn_id
    t0 = time.monotonic()
    scripted.wait_closed(conn_id, timeout=5)
    assert time.monotonic() - t0 < 3
    r = _get(gw, f"/echo?t={token}&again=1")
    assert r.status == 200
    assert scripted.wait_request(token, 2)[1].conn_id != conn_id


def test_upstream_keepalive_pool_size_zero_disables_pooling(gateway, scripted, token):
    gw = gateway(_svc(scripted, upstream_keepalive_pool_size=0))
    with RawConnection(gw.host, gw.port) as c:
        for i in range(3):
            c.request("GET", f"/echo?t={token}&i={i}")
            assert c.read_response().status == 200
    assert len({r.conn_id for r in scripted.wait_request(token, 3)}) == 3


@pytest.fixture
def limited_gw(gateway, scripted):
    return gateway(_svc(scripted, max_request_line=1024, max_header_size=4096, max_headers=20))


def _status_of(gw, data, must_close=True):
    with RawConnection(gw.host, gw.port) as c:
        c.send(data)
        r = c.read_response()
        if must_close:
            assert c.peer_closed(3), "connection left open after a rejected request head"
        return r.status


def test_request_line_limit_414(limited_gw, token):
    ok = f"GET /echo?t={token}&p={'a' * 900} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    with RawConnection(limited_gw.host, limited_gw.port) as c:
        c.send(ok)
        assert c.read_response().status == 200
    assert _status_of(limited_gw, f"GET /echo?p={'a' * 1100} HTTP/1.1\r\nHost: x\r\n\r\n".encode()) == 414


def test_header_size_limit_431(limited_gw):
    assert _status_of(limited_gw, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n") == 431


def test_header_count_limit_431(limited_gw, token):
    few = b"".join(b"X-H%d: v\r\n" % i for i in range(15))
    with RawConnection(limited_gw.host, limited_gw.port) as c:
        c.send(f"GET /echo?t={token} HTTP/1.1\r\nHost: x\r\n".encode() + few + b"\r\n")
        assert c.read_response().status == 200
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    assert _status_of(limited_gw, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n") == 431


@pytest.mark.parametrize("head", [
    b"GET /echo HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
], ids=["missing-host", "duplicate-host"])
def test_host_required_once_on_http11(shared_gateway, scripted, head):
    gw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))
    # the head itself parsed, so the connection may stay open
    assert _status_of(gw, head, must_close=False) == 400


def test_expect_continue_not_sent_for_unrouted_request(shared_gateway, scripted):
    """The gateway answers the expectation only once the request is routed: a request that matches nothing gets
    its 404 at once, never a 100 that would make the client send a body for nothing."""
    gw = shared_gateway({"services": [service("s", scripted.url, [route("only", ["/only"])])]})
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(b"POST /elsewhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        r = c.read_response("POST")
    assert r.interim == [] and r.status == 404


def test_access_log_error_field(gateway, scripted, refusing_port):
    gw = gateway({"services": [
        service("down", refusing_port.url, [route("down", ["/down"])], retries=0),
        service("up", scripted.url, [route("up", ["/up"])]),
    ]})
    r = _get(gw, "/down/x")
    assert r.status == 502
    e = gw.log_for(r.header("x-request-id"))
    assert e.get("error"), f"no error field on a 502 line: {e}"
    r = _get(gw, "/up/echo")
    e = gw.log_for(r.header("x-request-id"))
    assert r.status == 200 and not e.get("error"), e


def test_keepalive_timeout_zero_disables_client_keepalive(gateway, scripted, token):
    """nginx semantics: keepalive_timeout 0 closes the client connection after each response."""
    gw = gateway(_svc(scripted, keepalive_timeout=0))
    with gw.raw() as c:
        c.request("GET", f"/echo?t={token}")
        r = c.read_response()
        assert r.status == 200
        assert dict((k.lower(), v) for k, v in r.headers).get("connection", "").lower() == "close"
        assert c.peer_closed(5)
