"""Unusual and broken upstream responses: the client gets a well-formed answer (or a 502, or a cut connection once
the head is out), and a connection the upstream left in an unknown state is never reused."""

from __future__ import annotations

import json
from urllib.parse import quote_from_bytes

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import PeerClosed, RawConnection


def raw_target(token: str, data: bytes, close: bool = False, extra: str = "") -> str:
    return f"/raw?t={token}{extra}&close={int(close)}&b=" + quote_from_bytes(data, safe="")


@pytest.fixture
def gw(gateway, scripted):
    # own gateway: these tests look at which pooled connection the next request uses
    return gateway(single_service(scripted.url, name="scripted", route_name="all", retries=0, read_timeout=2000))


def _one(gw, target, method="GET", body=None, headers=()):
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request(method, target, list(headers), body)
        return c.read_response(method)


def _assert_502(r):
    assert r.status == 502, (r.status, r.body[:200])
    assert json.loads(r.body)["request_id"] == r.header("x-request-id")


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nabc",
    b"HTTP/1.1 2000 Huge\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: nonsense\r\nConnection: upgrade\r\n\r\n",
    b"",
], ids=["cl-conflict", "cl-not-number", "status-4-digits", "no-colon", "bad-chunk", "unsolicited-101", "empty"])
def test_malformed_upstream_response(gw, token, data):
    """Before the head went out: 502. (A bad chunk is only seen after the head: then the connection is cut.)"""
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data, close=True))
        try:
            r = c.read_response()
        except PeerClosed:
            assert data.startswith(b"HTTP/1.1 200 OK\r\nTransfer-Encoding"), "no response at all"
            return
    _assert_502(r)


def test_upstream_cl_and_te_not_both_relayed(gw, token):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data, close=True))
        r = c.read_response()
    if r.status == 200:
        assert r.body == b"hello"
        assert not (r.header_all("content-length") and r.header_all("transfer-encoding")), r.headers
    else:
        _assert_502(r)


def test_short_body_then_close_is_not_passed_off_as_complete(gw, token):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 400
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data, close=True))
        head = c.read_head()
        assert head.status == 200
        with pytest.raises(PeerClosed):
            c.read_body(head)


def test_bytes_after_response_do_not_leak_into_next(gw, scripted, token):
    """The upstream sends more than its Content-Length: the excess must not become the next response."""
    fake = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nPOISON!"
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + fake
    r1 = _one(gw, raw_target(token, data))
    assert r1.status == 200 and r1.body == b"hello"
    r2 = _one(gw, f"/echo?t={token}&next=1")
    assert r2.status == 200 and r2.body != b"POISON!", "excess upstream bytes served as the next response"
    assert r2.json()["target"].endswith("next=1")


def test_early_response_before_body_read(gw, scripted, token):
    """The upstream answers a POST without reading its body: the client gets that answer, and the upstream
    connection (now out of sync) is not reused."""
    data = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!"
    r1 = _one(gw, raw_target(token, data), "POST", b"B" * 200_000, [("Content-Type", "text/plain")])
    assert r1.status == 413 and r1.body == b"too big!"
    r2 = _one(gw, f"/echo?t={token}&next=1")
    assert r2.status == 200 and r2.json()["target"].endswith("next=1")


def test_http10_upstream_close_delimited(gw, token):
    data = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold school body"
    r = _one(gw, raw_target(token, data, close=True))
    assert r.status == 200 and r.body == b"old school body"


def test_upstream_204_with_stray_body_bytes(gw, scripted, token):
    """A 204 has no body whatever follows; stray bytes after it must not reach the client or the next request."""
    data = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\nSTRAY"
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data))
        r = c.read_response()
        assert r.status == 204 and r.body == b"" and r.header("x-a") == "1"
        c.request("GET", f"/echo?t={token}&next=1")
        r2 = c.read_response()
        assert r2.status == 200 and r2.json()["target"].endswith("next=1")


def test_response_header_bytes_preserved(gw, token):
    """Header values pass byte for byte, including obs-text (non-ASCII) bytes."""
    value = "caf\xe9 \u00ff".encode("latin-1")
    data = b"HTTP/1.1 200 OK\r\nX-Latin: " + value + b"\r\nX-UTF8: " + "관문".encode() + b"\r\nContent-Length: 2\r\n\r\nok"
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data))
        r = c.read_response()
    assert r.status == 200
    raw = r.raw_head
    assert b"\r\nX-Latin: " + value + b"\r\n" in raw + b"\r\n"
    assert b"\r\nX-UTF8: " + "관문".encode() + b"\r\n" in raw + b"\r\n"


def test_request_header_bytes_preserved(gw, scripted, token):
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.send(f"GET /echo?t={token} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Name: " + "관문".encode()
               + b"\r\nX-Latin: caf\xe9\r\n\r\n")
        assert c.read_response().status == 200
    raw = scripted.request_for(token).raw_head
    assert b"\r\nX-Name: " + "관문".encode() + b"\r\n" in raw
    assert b"\r\nX-Latin: caf\xe9\r\n" in raw


def test_upstream_response_with_too_many_fields_is_a_502(gw, token):
    """Response heads have the request heads' limits (max_headers here; max_header_size is pinned in
    tests/protocol/test_framing.py), as Envoy's max_response_headers_kb and nginx's proxy_buffer_size cap them:
    over them, 502 instead of buffering more."""
    data = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-F%d: 1\r\n" % i for i in range(150)) + b"Content-Length: 0\r\n\r\n"
    r = _one(gw, raw_target(token, data))
    _assert_502(r)
    line = gw.log_for(r.header("x-request-id"))
    assert "response head over the limit" in line["error"]


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n" + b"x" * 10 + b"\r\n",
], ids=["content-length", "chunked"])
def test_upstream_close_mid_body_closes_the_client_connection(gw, token, data):
    """The upstream closes before the body it announced is complete: the client connection is closed too, so the
    client sees a cut response, never a short one that looks complete on a connection it would reuse."""
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data, close=True))
        head = c.read_head()
        assert head.status == 200
        with pytest.raises(PeerClosed):
            c.read_body(head)
