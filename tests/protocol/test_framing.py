"""Protocol tier: the downstream protocol and the exchange driven with in-memory transports, no sockets.

Each test feeds client bytes and upstream bytes by hand and checks the exact bytes written each way: request and
response framing, pipelining order, HEAD/204/304, 1xx relay and the HTTP/1.0 rules. The integration tier checks the
same against real servers; this tier pins the byte-level decisions and runs in milliseconds.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gwanmun.config import load_text
from gwanmun.config.compile import compile_runtime
from gwanmun.http.downstream import DownstreamProtocol
from gwanmun.server import Worker
from gwanmun.upstream.connection import UpstreamConnection

CONFIG = """
_format_version: "3.0"
gateway: {access_log: "off"}
services:
  - name: origin
    url: http://127.0.0.1:9
    routes: [{name: all, paths: ["/"]}]
"""


class Transport:
    """Records what is written; enough of asyncio.Transport for the protocols."""

    def __init__(self, peer=("203.0.113.7", 40000)):
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self.peer = peer

    def write(self, data):
        self.written += data

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out

    def is_closing(self):
        return self.closed

    def get_extra_info(self, key, default=None):
        return self.peer if key == "peername" else default

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True


class Rig:
    """One client connection through the gateway to one pooled upstream connection."""

    def __init__(self):
        self.worker = Worker(compile_runtime(load_text(CONFIG)), asyncio.get_running_loop())
        self.client = Transport()
        self.down = DownstreamProtocol(self.worker, 8000)
        self.down.connection_made(self.client)
        pool = self.worker.pools.get("127.0.0.1", 9)
        self.upstream = Transport()
        self.conn = UpstreamConnection(pool)
        self.conn.connection_made(self.upstream)
        pool.idle.append(self.conn)

    def send(self, data: bytes) -> None:
        self.down.data_received(data)

    def answer(self, data: bytes) -> None:
        self.conn.data_received(data)


@pytest.fixture
def rig():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make():
        return Rig()

    r = loop.run_until_complete(make())
    yield r
    loop.close()
    asyncio.set_event_loop(None)


def head_of(data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields, body


OK_12 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"


def test_request_head_is_rewritten_in_one_write(rig):
    rig.send(b"GET /a?x=1 HTTP/1.1\r\nHost: gw.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
             b"User-Agent: t\r\n\r\n")
    sent = rig.upstream.take()
    line, fields, body = head_of(sent)
    assert line == b"GET /a?x=1 HTTP/1.1"
    assert fields[b"host"] == b"127.0.0.1:9"
    assert b"connection" not in fields and b"x-secret" not in fields  # hop-by-hop and what Connection names
    assert fields[b"x-forwarded-for"] == b"203.0.113.7" and fields[b"x-forwarded-host"] == b"gw.example"
    assert fields[b"via"] == b"1.1 gwanmun" and fields[b"x-request-id"]
    assert fields[b"user-agent"] == b"t" and body == b""


def test_content_length_response_passes_through(rig):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(OK_12)
    line, fields, body = head_of(rig.client.take())
    assert line == b"HTTP/1.1 200 OK" and fields[b"content-length"] == b"12" and body == b"hello world\n"
    assert b"transfer-encoding" not in fields
    assert rig.conn.exchange is None and rig.conn in rig.conn.pool.idle  # back in the pool


@pytest.mark.parametrize(
    "version,expect_chunked",
    [(b"1.1", True), (b"1.0", False)],
    ids=["http11-rechunked", "http10-close-delimited"],
)
def test_chunked_response_framing_by_client_version(rig, version, expect_chunked):
    rig.send(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    line, fields, body = head_of(rig.client.take())
    if expect_chunked:
        assert fields[b"transfer-encoding"] == b"chunked"
        assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        assert not rig.client.closed
    else:
        assert b"transfer-encoding" not in fields and fields[b"connection"] == b"close"
        assert body == b"hello world"
        assert rig.client.closed  # an HTTP/1.0 client reads to the close


def test_close_delimited_upstream_is_chunked_to_http11(rig):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
    rig.conn.eof_received()
    _, fields, body = head_of(rig.client.take())
    assert fields[b"transfer-encoding"] == b"chunked"
    assert body == b"b\r\nuntil close\r\n0\r\n\r\n"
    assert not rig.client.closed  # the client connection stays usable


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(rig, status):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 %d X\r\nETag: \"e\"\r\n\r\n" % status)
    line, fields, body = head_of(rig.client.take())
    assert line.startswith(b"HTTP/1.1 %d" % status) and body == b""
    assert b"transfer-encoding" not in fields
    assert rig.conn in rig.conn.pool.idle


def test_head_response_ends_at_the_head(rig):
    rig.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")  # no body follows a HEAD answer
    line, fields, body = head_of(rig.client.take())
    assert fields[b"content-length"] == b"12" and body == b""
    assert rig.conn in rig.conn.pool.idle  # the exchange ended without waiting for 12 bytes


def test_interim_responses_are_relayed_before_the_final_one(rig):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK_12)
    out = rig.client.take()
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert out.endswith(b"hello world\n")


def test_pipelined_requests_are_answered_in_order(rig):
    rig.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head_of(rig.upstream.take())[0] == b"GET /1 HTTP/1.1"  # one at a time upstream
    assert not rig.client.reading  # reading pauses while requests wait
    for n in (1, 2, 3):
        rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
        assert rig.client.take().endswith(b"\r\n\r\n%d" % n)
        if n < 3:
            assert head_of(rig.upstream.take())[0] == b"GET /%d HTTP/1.1" % (n + 1)
    assert rig.client.reading


def test_chunked_request_body_is_rechunked(rig):
    rig.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    _, fields, body = head_of(rig.upstream.take())
    assert fields[b"transfer-encoding"] == b"chunked" and body == b"3\r\nabc\r\n0\r\n\r\n"


def test_invalid_upstream_response_is_502_json(rig):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"this is not http\r\n\r\n")
    line, fields, body = head_of(rig.client.take())
    assert line == b"HTTP/1.1 502 Bad Gateway" and fields[b"content-type"].startswith(b"application/json")
    assert b'"request_id"' in body and rig.conn.closed


def test_bytes_in_counts_what_the_client_sent(rig):
    """The access log's bytes_in is the client's request (head and body), not the rewritten upstream head."""
    raw = b"POST /upload?x=1 HTTP/1.1\r\nHost: gw.example\r\nUser-Agent: t\r\nContent-Length: 5\r\n\r\nhello"
    rig.send(raw)
    assert rig.down.current.bytes_in == len(raw)


def test_stray_bytes_after_a_response_never_answer_the_next_pipelined_request(rig):
    """The upstream parser belongs to the connection: bytes after a complete response in the same read must not
    become the answer to the next request, even when that request took the connection from inside the read."""
    rig.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!")
    out = rig.client.take()
    assert out.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"EVIL!" not in out
    assert rig.conn.closed and rig.conn not in rig.conn.pool.idle


def test_stray_bytes_after_a_response_close_the_idle_connection(rig):
    rig.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Evil: 1\r\n")
    assert rig.client.take().endswith(b"\r\n\r\nok")
    assert rig.conn.closed and rig.conn not in rig.conn.pool.idle


def test_upstream_response_head_over_max_header_size_is_a_502(rig):
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n")
    out = rig.client.take()
    assert out.startswith(b"HTTP/1.1 502 ") and b"aaaa" not in out
    assert rig.conn.closed


def test_refused_upgrade_keeps_http_and_parses_the_held_request(rig):
    """Bytes after an upgrade request are held until the upstream answers; a refusal (403) resumes HTTP parsing,
    and the held request is proxied on the same upstream connection and answered in order."""
    rig.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
             b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    first = head_of(rig.upstream.take())
    assert first[0] == b"GET /ws HTTP/1.1"
    rig.answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    assert head_of(rig.upstream.take())[0] == b"GET /next HTTP/1.1"
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = rig.client.take()
    assert out.startswith(b"HTTP/1.1 403 Forbidden\r\n") and out.endswith(b"\r\n\r\nok")
    assert b" 502 " not in out
