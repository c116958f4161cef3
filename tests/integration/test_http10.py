"""HTTP/1.0 clients: no keep-alive unless asked for, never chunked, no 1xx."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection
from tests.fixtures.upstreams import pattern_bytes


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


def _no_chunked(r):
    assert "chunked" not in ",".join(r.header_all("transfer-encoding")).lower(), \
        f"chunked response sent to an HTTP/1.0 client: {r.headers}"


def test_http10_get_without_host_closes(bin_gw):
    with RawConnection(bin_gw.host, bin_gw.port) as c:
        c.send(b"GET /get?v=10 HTTP/1.0\r\nUser-Agent: old\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        _no_chunked(r)
        assert r.json()["args"] == {"v": "10"}
        assert c.peer_closed(5), "HTTP/1.0 connection without keep-alive left open"


@pytest.mark.parametrize("target", ["/stream/5", "/gen?n=300000&te=chunked"])
def test_http10_streamed_body_not_chunked(gw, bin_gw, target):
    g = bin_gw if target.startswith("/stream") else gw
    with RawConnection(g.host, g.port) as c:
        c.send(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200
        _no_chunked(r)
        assert r.framing in ("content-length", "close")
        if target.startswith("/stream"):
            assert [json.loads(x)["id"] for x in r.body.decode().splitlines()] == list(range(5))
        else:
            assert r.body == pattern_bytes(300000)
        assert c.peer_closed(5)


def test_http10_keepalive_when_asked(gw, token):
    """With ``Connection: keep-alive`` a 1.0 client may keep the connection; if the gateway says keep-alive the
    connection must really stay usable, otherwise it must close."""
    with RawConnection(gw.host, gw.port) as c:
        c.send(f"GET /echo?t={token}&i=0 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        r = c.read_response()
        assert r.status == 200
        _no_chunked(r)
        if "keep-alive" in r.connection_tokens():
            assert r.framing == "content-length"
            c.send(f"GET /echo?t={token}&i=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            r2 = c.read_response()
            assert r2.status == 200 and r2.json()["target"].endswith("i=1")
        else:
            assert c.peer_closed(5)


def test_http10_keepalive_streamed_body_closes(gw):
    """A body of unknown length cannot be delimited for a 1.0 client except by closing."""
    with RawConnection(gw.host, gw.port) as c:
        c.send(b"GET /gen?n=10000&te=chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        _no_chunked(r)
        assert r.body == pattern_bytes(10000)
        if r.framing == "close":
            assert c.eof
        else:
            assert r.framing == "content-length"


def test_http10_post(gw, token):
    body = b"hello from 1996"
    with RawConnection(gw.host, gw.port) as c:
        c.send(b"POST /sink?t=%s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (token.encode(), len(body), body))
        r = c.read_response("POST")
        assert r.status == 200 and r.json()["bytes"] == len(body)
        assert c.peer_closed(5)


def test_http10_gets_no_1xx(gw, token):
    """RFC 9110 §15.2: a server must not send a 1xx response to an HTTP/1.0 client."""
    with RawConnection(gw.host, gw.port) as c:
        c.send(f"GET /hints?n=2&t={token} HTTP/1.0\r\n\r\n".encode())
        r = c.read_response()
        assert r.interim == [], f"1xx sent to an HTTP/1.0 client: {[i.raw_head for i in r.interim]}"
        assert r.status == 200
