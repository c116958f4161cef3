"""``Expect: 100-continue``: the client sends its head and waits for ``100 Continue`` before the body.

The gateway may answer 100 itself or relay the upstream's; either way the client must get a ``100 Continue`` before
it sends the body, and then exactly one final response.
"""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, crc32_of
from tests.fixtures.upstreams import pattern_bytes


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


@pytest.mark.parametrize("path", ["/continue", "/sink"])
def test_100_continue_before_body(gw, scripted, token, path):
    body = pattern_bytes(1 << 20)
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(f"POST {path}?t={token} HTTP/1.1\r\nHost: {gw.address}\r\nExpect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode())
        first = c.read_head()  # times out if nobody sends 100 Continue
        assert first.status == 100, f"expected 100 Continue, got {first.status}"
        c.send(body)
        r = c.read_response("POST")
        assert r.status == 200
        assert r.json()["bytes"] == len(body) and r.json()["crc32"] == crc32_of(body)
    rec = scripted.request_for(token)
    assert rec.body_len == len(body)


def test_100_continue_body_sent_without_waiting(gw, token):
    """Clients may stop waiting and send the body anyway (curl does after 1 s): that must work too."""
    body = b"z" * 50000
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(f"PUT /continue?t={token} HTTP/1.1\r\nHost: {gw.address}\r\nExpect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        r = c.read_response("PUT")
        assert r.status == 200 and r.json()["bytes"] == len(body)
        assert all(i.status == 100 for i in r.interim)
        # the connection is still in sync afterwards
        c.request("GET", f"/echo?t={token}")
        assert c.read_response().status == 200


def test_100_continue_chunked_body(gw, token):
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(f"POST /continue?t={token} HTTP/1.1\r\nHost: {gw.address}\r\nExpect: 100-continue\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n".encode())
        assert c.read_head().status == 100
        c.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r = c.read_response("POST")
        assert r.status == 200 and r.json()["bytes"] == 11


def test_100_continue_httpbin(bin_gw):
    body = b'{"k": "v"}'
    with RawConnection(bin_gw.host, bin_gw.port, timeout=5) as c:
        c.send(f"POST /post HTTP/1.1\r\nHost: {bin_gw.address}\r\nContent-Type: application/json\r\n"
               f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert c.read_head().status == 100
        c.send(body)
        r = c.read_response("POST")
        assert r.status == 200 and r.json()["json"] == {"k": "v"}


def test_upstream_rejects_expectation(gw, token):
    """The upstream answers 417 without reading the body: the client gets a final 417, whichever way the gateway
    handled the expectation."""
    body = b"q" * 10000
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(f"POST /continue?mode=final&t={token} HTTP/1.1\r\nHost: {gw.address}\r\nExpect: 100-continue\r\n"
               f"Content-Length: {len(body)}\r\n\r\n".encode())
        first = c.read_head()
        if first.status == 100:  # the gateway said go on; it still has to relay the upstream's verdict
            c.send(body)
            r = c.read_response("POST")
        else:
            c.read_body(first, "POST")
            r = first
        assert r.status == 417


def test_expect_without_body(gw, token):
    with RawConnection(gw.host, gw.port, timeout=5) as c:
        c.send(f"POST /continue?t={token} HTTP/1.1\r\nHost: {gw.address}\r\nExpect: 100-continue\r\n"
               f"Content-Length: 0\r\n\r\n".encode())
        r = c.read_response("POST")
        assert r.status == 200 and r.json()["bytes"] == 0
