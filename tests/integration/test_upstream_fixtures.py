"""The test upstreams themselves, exercised directly (no gateway): if these fail, gateway test failures mean nothing."""

from __future__ import annotations

import gzip

import pytest

from tests.fixtures.rawhttp import PeerClosed, RawConnection, chunked, crc32_of
from tests.fixtures.upstreams import GZIP_BODY, pattern_bytes, pattern_crc32


def test_httpbin_serves_get(httpbin):
    with RawConnection(httpbin.host, httpbin.port) as c:
        c.request("GET", "/get?x=1")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["args"] == {"x": "1"}
    assert r.header("server") == "gunicorn"


def test_httpbin_keeps_connection_alive(httpbin):
    with RawConnection(httpbin.host, httpbin.port) as c:
        for i in range(3):
            c.request("GET", f"/get?i={i}")
            r = c.read_response()
            assert r.status == 200 and r.json()["args"] == {"i": str(i)}
        assert not c.peer_closed(0.2)


def test_scripted_echo_records_exact_head(scripted, token):
    with RawConnection(scripted.host, scripted.port) as c:
        c.send(f"GET /x/echo?t={token} HTTP/1.1\r\nHost: a\r\nX-Odd-Case: v1\r\nx-odd-case: v2\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.raw_head == f"GET /x/echo?t={token} HTTP/1.1\r\nHost: a\r\nX-Odd-Case: v1\r\nx-odd-case: v2\r\n\r\n".encode()
    assert rec.header_all("x-odd-case") == ["v1", "v2"]
    assert r.json()["headers"][1] == ["X-Odd-Case", "v1"]


@pytest.mark.parametrize("te", ["cl", "chunked", "close"])
def test_scripted_gen(scripted, te):
    n = 3 * (1 << 20) + 12345
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", f"/gen?n={n}&te={te}&chunk=65536")
        r = c.read_response()
    assert r.status == 200
    assert r.framing == {"cl": "content-length", "chunked": "chunked", "close": "close"}[te]
    assert len(r.body) == n and crc32_of(r.body) == pattern_crc32(n)


def test_scripted_sink_content_length_and_chunked(scripted):
    body = pattern_bytes(2_000_000)
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("POST", "/sink", body=body)
        r = c.read_response()
        assert r.json()["bytes"] == len(body) and r.json()["crc32"] == crc32_of(body)
        c.request("POST", "/sink", [("Transfer-Encoding", "chunked")],
                  body=chunked([body[:1000], body[1000:]], [("X-T", "1")]))
        r = c.read_response()
        assert r.json() == {"bytes": len(body), "crc32": crc32_of(body), "chunked": True,
                            "trailers": [["X-T", "1"]], "conn_id": r.json()["conn_id"]}


def test_scripted_hints_and_continue(scripted):
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", "/hints?n=2")
        r = c.read_response()
        assert [i.status for i in r.interim] == [103, 103] and r.status == 200
        c.request("POST", "/continue", [("Expect", "100-continue"), ("Content-Length", "5")])
        head = c.read_head()
        assert head.status == 100
        c.send(b"hello")
        r = c.read_response("POST")
        assert r.json()["bytes"] == 5


def test_scripted_failure_modes(scripted, token):
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", f"/drop-next?t={token}")
        assert c.read_response().status == 200
        c.request("GET", f"/echo?t={token}")
        with pytest.raises(PeerClosed):
            c.read_response()
    recs = scripted.wait_request(token, 2)
    assert recs[1].dropped and recs[0].conn_id == recs[1].conn_id
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", "/close-after")
        assert c.read_response().status == 200
        assert c.peer_closed(2)
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", "/reset")
        with pytest.raises((PeerClosed, ConnectionResetError)):
            c.read_response()
    with RawConnection(scripted.host, scripted.port) as c:
        c.request("GET", "/garbage")
        with pytest.raises(ValueError):
            c.read_response()


def test_scripted_hang_and_gate(scripted):
    with RawConnection(scripted.host, scripted.port, timeout=0.3) as c:
        c.request("GET", "/hang")
        with pytest.raises(TimeoutError):
            c.read_head()
    with RawConnection(scripted.host, scripted.port, timeout=5) as c:
        c.request("GET", "/gate?name=selftest&n=5000&first=100")
        r = c.read_head()
        assert r.status == 200
        assert c.read_until(b"\r\n") == b"64\r\n"
        c.settimeout(0.2)
        c.read_exact(102)
        with pytest.raises(TimeoutError):
            c.read_exact(1)
        scripted.open_gate("selftest")
        c.settimeout(5)
        rest = c.read_until(b"0\r\n\r\n")
        assert rest.startswith(b"%x\r\n" % 4900)


def test_gzip_body_is_valid():
    assert gzip.decompress(GZIP_BODY).startswith(b'{"hello"')
