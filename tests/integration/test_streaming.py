"""Streaming responses: bytes reach the client as the upstream sends them, not after the upstream finished."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from tests.fixtures.compare import fetch
from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, crc32_of
from tests.fixtures.upstreams import pattern_bytes, pattern_crc32


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


def test_httpbin_stream_lines(bin_gw, httpbin):
    direct = fetch(httpbin.host, httpbin.port, "GET", "/stream/20")
    via = fetch(bin_gw.host, bin_gw.port, "GET", "/stream/20")
    assert direct.framing == "chunked"
    assert via.status == 200
    assert via.framing in ("chunked", "close")
    lines = via.body.decode().splitlines()
    assert [json.loads(x)["id"] for x in lines] == list(range(20))
    assert {json.loads(x)["url"] for x in lines} == {json.loads(x)["url"] for x in direct.body.decode().splitlines()}


def test_httpbin_drip_arrives_progressively(bin_gw):
    """httpbin's /drip sends 5 bytes 0.3 s apart (Content-Length 5): the first must arrive well before the last."""
    with RawConnection(bin_gw.host, bin_gw.port, timeout=10) as c:
        t0 = time.monotonic()
        c.request("GET", "/drip?numbytes=5&duration=1.5&delay=0&code=200")
        head = c.read_head()
        assert head.status == 200 and head.header("content-length") == "5"
        arrivals = []
        got = b""
        while len(got) < 5:
            part = c.read_some()
            assert part, "connection closed mid-body"
            got += part
            arrivals.append((time.monotonic() - t0, len(got)))
    assert got == b"*****"
    first_at = arrivals[0][0]
    last_at = arrivals[-1][0]
    assert last_at - first_at > 0.8, f"body was buffered, not streamed: arrivals {arrivals}"
    assert len(arrivals) >= 3, f"bytes arrived in too few pieces: {arrivals}"


def test_gated_chunk_reaches_client_before_upstream_finishes(gw, scripted, token):
    """The upstream sends its head and 1000 body bytes, then waits for the test: the client must get those 1000
    bytes while the upstream is still waiting."""
    c = http.client.HTTPConnection(gw.host, gw.port, timeout=5)
    try:
        c.request("GET", f"/gate?name={token}&n=50000&first=1000&t={token}")
        r = c.getresponse()
        assert r.status == 200
        first = r.read(1000)  # blocks (then times out) if the gateway buffers the response
        assert first == pattern_bytes(1000)
        scripted.open_gate(token)
        rest = r.read()
        assert len(first + rest) == 50000 and crc32_of(first + rest) == pattern_crc32(50000)
    finally:
        c.close()


@pytest.mark.parametrize("te", ["cl", "chunked", "close"])
def test_upstream_framings_relayed(gw, te):
    n = 5 * (1 << 20) + 7
    via = fetch(gw.host, gw.port, "GET", f"/gen?n={n}&te={te}&chunk=65536")
    assert via.status == 200
    assert len(via.body) == n and crc32_of(via.body) == pattern_crc32(n)
    if te == "cl":
        assert via.header("content-length") == str(n), "Content-Length from upstream not kept"
        assert via.framing == "content-length"
    else:
        # an upstream body of unknown length reaches a 1.1 client chunked (or close-delimited)
        assert via.framing in ("chunked", "close")


def test_close_delimited_upstream_keeps_client_connection_usable(gw, token):
    """A close-delimited upstream body can be re-framed as chunked for an HTTP/1.1 client, whose connection may then
    stay open; if the gateway chose to close it, it must have said so."""
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/gen?n=100000&te=close&t={token}")
        r = c.read_response()
        assert len(r.body) == 100000 and r.body == pattern_bytes(100000)
        if r.framing == "close":
            assert "close" in r.connection_tokens()
            return
        c.request("GET", f"/echo?t={token}")
        r2 = c.read_response()
        assert r2.status == 200
