"""HTTP/1.1 pipelining: several requests in one write are all answered, in order."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, build_request
from tests.fixtures.upstreams import pattern_bytes


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


def test_pipelined_gets_in_order(gw, token):
    host = gw.address
    data = b"".join(build_request("GET", f"/echo?t={token}&i={i}", host=host) for i in range(8))
    with RawConnection(gw.host, gw.port) as c:
        c.send(data)
        for i in range(8):
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == f"/echo?t={token}&i={i}", f"response {i} out of order"


def test_pipelined_slow_first_response_holds_the_rest(gw, scripted, token):
    """The first response is held by the upstream; the two after it must not overtake it."""
    host = gw.address
    data = (build_request("GET", f"/gate?name={token}&n=5000&first=10&t={token}", host=host)
            + build_request("GET", f"/echo?t={token}&i=1", host=host)
            + build_request("GET", f"/echo?t={token}&i=2", host=host))
    with RawConnection(gw.host, gw.port) as c:
        c.send(data)
        scripted.wait_request(token, 1)
        scripted.open_gate(token)
        r0 = c.read_response()
        assert r0.status == 200 and r0.body == pattern_bytes(5000)
        r1 = c.read_response()
        r2 = c.read_response()
        assert r1.json()["target"].endswith("&i=1") and r2.json()["target"].endswith("&i=2")


def test_pipelined_with_bodies_httpbin(bin_gw):
    host = bin_gw.address
    reqs = [
        ("POST", "/anything?i=0", b'{"a": 0}'),
        ("GET", "/get?i=1", None),
        ("PUT", "/anything?i=2", b"x" * 70000),
        ("POST", "/anything?i=3", b""),
        ("DELETE", "/anything?i=4", None),
    ]
    data = b"".join(build_request(m, t, [("Content-Type", "text/plain")] if b is not None else [], b, host=host)
                    for m, t, b in reqs)
    with RawConnection(bin_gw.host, bin_gw.port, timeout=20) as c:
        c.send(data)
        for i, (m, t, b) in enumerate(reqs):
            r = c.read_response(m)
            assert r.status == 200, (i, r.status, r.body[:200])
            doc = r.json()
            assert doc["args"] == {"i": str(i)}
            if m != "GET":
                assert doc["method"] == m
                assert doc["data"] == (b or b"").decode()


def test_pipelined_head_in_the_middle(bin_gw):
    host = bin_gw.address
    data = (build_request("GET", "/bytes/300?seed=1", host=host)
            + build_request("HEAD", "/bytes/5000?seed=1", host=host)
            + build_request("GET", "/bytes/200?seed=2", host=host))
    with RawConnection(bin_gw.host, bin_gw.port) as c:
        c.send(data)
        a = c.read_response("GET")
        h = c.read_response("HEAD")
        b = c.read_response("GET")
    assert len(a.body) == 300
    assert h.status == 200 and h.header("content-length") == "5000" and h.body == b""
    assert len(b.body) == 200


def test_pipelined_last_request_closes(gw, token):
    host = gw.address
    data = (build_request("GET", f"/echo?t={token}&i=0", host=host)
            + build_request("GET", f"/echo?t={token}&i=1", [("Connection", "close")], host=host))
    with RawConnection(gw.host, gw.port) as c:
        c.send(data)
        assert c.read_response().json()["target"].endswith("i=0")
        last = c.read_response()
        assert last.json()["target"].endswith("i=1")
        assert "close" in last.connection_tokens()
        assert c.peer_closed(5)


def test_pipelined_requests_split_across_writes(gw, token):
    """Request boundaries need not line up with TCP segments: send the pipeline a few bytes at a time."""
    host = gw.address
    data = b"".join(build_request("POST", f"/echo?t={token}&i={i}", [("Content-Type", "text/plain")], b"body%d" % i,
                                  host=host) for i in range(3))
    with RawConnection(gw.host, gw.port) as c:
        for k in range(0, len(data), 7):
            c.send(data[k:k + 7])
        for i in range(3):
            r = c.read_response("POST")
            assert r.json()["target"].endswith(f"i={i}") and r.json()["body_len"] == 5


def test_pipelined_chunked_body_read_while_waiting(bin_gw):
    """A chunked body that arrives while its request waits behind another is framed as chunked when forwarded
    (it used to reach the upstream unframed and without its last chunk, and the request hung)."""
    with RawConnection(bin_gw.host, bin_gw.port) as c:
        c.send(b"GET /get HTTP/1.1\r\nHost: h\r\n\r\n"
               b"POST /post HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
               b"POST /post HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        assert c.read_response().status == 200
        r = c.read_response()
        assert r.status == 200 and r.json()["data"] == "hello world"
        c.send(b"2\r\nde\r\n0\r\n\r\n")  # the third body: begun while queued, finished after its turn came
        r = c.read_response()
        assert r.status == 200 and r.json()["data"] == "abcde"
