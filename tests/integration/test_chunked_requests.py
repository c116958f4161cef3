"""Chunked request bodies reach the upstream intact, whatever the chunking and with extensions and trailers."""

from __future__ import annotations

import pytest

from tests.fixtures.compare import fetch
from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, chunked, crc32_of
from tests.fixtures.upstreams import pattern_bytes


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


def _post_chunked(gw, target, encoded: bytes, send_step: int | None = None):
    with RawConnection(gw.host, gw.port, timeout=20) as c:
        c.send(f"POST {target} HTTP/1.1\r\nHost: {gw.address}\r\nContent-Type: application/octet-stream\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n".encode())
        if send_step:
            for k in range(0, len(encoded), send_step):
                c.send(encoded[k:k + send_step])
        else:
            c.send(encoded)
        return c.read_response("POST")


@pytest.mark.parametrize("sizes", [[1], [5, 0], [1] * 50, [4096, 1, 65536, 3], [1 << 20, 1 << 20, 12345]])
def test_chunked_body_intact(gw, scripted, token, sizes):
    data = pattern_bytes(sum(sizes))
    parts, off = [], 0
    for s in sizes:
        parts.append(data[off:off + s])
        off += s
    r = _post_chunked(gw, f"/sink?t={token}", chunked(parts))
    assert r.status == 200
    assert r.json()["bytes"] == len(data) and r.json()["crc32"] == crc32_of(data)
    rec = scripted.request_for(token)
    if not rec.chunked:  # the gateway may have buffered and re-framed it with a Content-Length
        assert rec.header("content-length") == str(len(data))


def test_chunked_body_sent_byte_by_byte(gw, token):
    data = b"chunk boundaries never line up with reads"
    r = _post_chunked(gw, f"/sink?t={token}", chunked([data[:10], data[10:]]), send_step=1)
    assert r.status == 200 and r.json()["bytes"] == len(data) and r.json()["crc32"] == crc32_of(data)


def test_chunk_extensions_and_trailers(gw, token):
    data = b"hello world"
    encoded = b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n"
    r = _post_chunked(gw, f"/sink?t={token}", encoded)
    assert r.status == 200 and r.json()["bytes"] == len(data) and r.json()["crc32"] == crc32_of(data)


def test_empty_chunked_body(gw, token):
    r = _post_chunked(gw, f"/sink?t={token}", b"0\r\n\r\n")
    assert r.status == 200 and r.json()["bytes"] == 0


def test_chunked_then_next_request_on_same_connection(gw, token):
    with RawConnection(gw.host, gw.port) as c:
        c.send(f"POST /sink?t={token} HTTP/1.1\r\nHost: {gw.address}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
               + chunked([b"abc", b"defg"]))
        assert c.read_response("POST").json()["bytes"] == 7
        c.request("GET", f"/echo?t={token}&after=1")
        r = c.read_response()
        assert r.status == 200 and r.json()["target"].endswith("after=1")


def test_chunked_post_to_httpbin_matches_direct(bin_gw, httpbin):
    data = b'{"chunked": true, "n": 12345}'
    encoded = chunked([data[:7], data[7:20], data[20:]])
    hs = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    direct = fetch(httpbin.host, httpbin.port, "POST", "/post", hs, encoded)
    via = fetch(bin_gw.host, bin_gw.port, "POST", "/post", hs, encoded)
    assert direct.status == via.status == 200
    assert via.json()["json"] == direct.json()["json"] == {"chunked": True, "n": 12345}


def test_16mib_chunked_upload_small_chunks(gw, token):
    n = 16 << 20
    data = pattern_bytes(n)
    encoded = chunked([data[k:k + 8192] for k in range(0, n, 8192)])
    r = _post_chunked(gw, f"/sink?t={token}", encoded)
    assert r.status == 200 and r.json()["bytes"] == n and r.json()["crc32"] == crc32_of(data)
