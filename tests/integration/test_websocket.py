"""WebSocket through the gateway, with the ``websockets`` library as a real client and a real server.

The connection becomes a tunnel only once the upstream answers 101. Any other answer is relayed as plain HTTP and
the client connection stays HTTP: bytes the client sent after the upgrade request are then parsed as requests,
never passed through (the WebSocket-smuggling bug class).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import serve

from tests.fixtures.gateway import service, route, single_service
from tests.fixtures.rawhttp import RawConnection

from .test_upstream_responses import raw_target


class WsUpstream:
    """A websockets server in a thread: echoes text and binary, and has a few special paths."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []
        self.closed = threading.Event()
        self.server = serve(self._handle, "127.0.0.1", 0, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handle(self, ws) -> None:
        self.handshakes.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        path = ws.request.path
        try:
            if path.endswith("/bye"):
                ws.send("bye")
                ws.close(code=4001, reason="server says bye")
                return
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def ws_upstream():
    up = WsUpstream()
    yield up
    up.close()


@pytest.fixture
def ws_gw(gateway, ws_upstream, scripted):
    return gateway({
        "services": [
            service("ws", ws_upstream.url, [route("ws", ["/ws"], strip_path=False)], read_timeout=1500),
            service("scripted", scripted.url, [route("raw", ["/raw", "/echo"], strip_path=False)], retries=0),
        ],
    })


def ws_url(gw, path="/ws/chat") -> str:
    return f"ws://{gw.host}:{gw.port}{path}"


def test_echo_text_and_binary_through_the_gateway(ws_gw, ws_upstream):
    with connect(ws_url(ws_gw), open_timeout=5) as ws:
        assert ws.response.status_code == 101
        assert ws.response.headers["x-request-id"]
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        blob = os.urandom(128 * 1024)  # in one message, several reads on each side (random: no deflate gain)
        ws.send(blob)
        assert ws.recv(timeout=5) == blob
        for i in range(50):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(50)] == [f"m{i}" for i in range(50)]
    hs = ws_upstream.handshakes[0]
    assert hs["upgrade"].lower() == "websocket" and "upgrade" in hs["connection"].lower()
    assert hs["sec-websocket-key"] and hs["x-forwarded-for"] == "127.0.0.1"
    line = ws_gw.wait_log(lambda r: r["path"] == "/ws/chat")
    assert line["status"] == 101 and line["route"] == "ws"
    assert line["bytes_in"] > len(blob) and line["bytes_out"] > len(blob), line


def test_client_close_reaches_the_upstream(ws_gw, ws_upstream):
    with connect(ws_url(ws_gw), open_timeout=5) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        ws.close(code=1000, reason="done")
        assert ws_upstream.closed.wait(5)
        assert ws.close_code == 1000


def test_server_close_reaches_the_client(ws_gw):
    with connect(ws_url(ws_gw, "/ws/bye"), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4001 and ws.close_reason == "server says bye"


def test_idle_tunnel_is_closed_after_read_timeout(ws_gw, ws_upstream):
    """No byte either way for the service's read_timeout (1.5 s here): both sides are closed."""
    with connect(ws_url(ws_gw), open_timeout=5, ping_interval=None) as ws:
        t = time.monotonic()
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert 1.0 < time.monotonic() - t < 6
    assert ws_upstream.closed.wait(5)
    line = ws_gw.wait_log(lambda r: r["path"] == "/ws/chat" and "error" in r)
    assert line["status"] == 101 and "idle" in line["error"]


def test_non_101_answer_keeps_the_connection_http(ws_gw, token):
    """The upstream refuses the upgrade: the client gets that answer, and what it sent after the upgrade request
    (here, a smuggled request) is parsed as HTTP, routed, and answered; nothing is tunnelled."""
    refusal = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"
    with RawConnection(ws_gw.host, ws_gw.port, timeout=10) as c:
        upgrade = (
            f"GET {raw_target(token, refusal)} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ).encode()
        smuggled = f"GET /echo?t={token}&next=1 HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        c.send(upgrade + smuggled)  # one write: the second request rides behind the upgrade request
        r1 = c.read_response()
        assert r1.status == 403 and r1.body == b"nope"
        r2 = c.read_response()
        assert r2.status == 200 and json.loads(r2.body)["target"].endswith("next=1")


def test_101_without_an_upgrade_request_is_a_502(gateway, scripted, token):
    gw = gateway(single_service(scripted.url, retries=0))
    data = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.request("GET", raw_target(token, data))
        assert c.read_response().status == 502


def test_upgrade_to_a_plain_http_upstream_is_answered_as_http(ws_gw):
    """A route whose upstream ignores Upgrade answers 200: the websockets client sees a refused handshake."""
    with pytest.raises(InvalidStatus) as err:
        connect(f"ws://{ws_gw.host}:{ws_gw.port}/echo?t=x", open_timeout=5)
    assert err.value.response.status_code == 200


def test_tunnel_survives_a_slow_reader(ws_gw):
    """Back-pressure in the tunnel: 8 MiB echoed while the client reads slowly arrives complete."""
    with connect(ws_url(ws_gw), open_timeout=5, max_size=None) as ws:
        chunk = os.urandom(1 << 20)
        for _ in range(8):
            ws.send(chunk)
        got = 0
        for _ in range(8):
            time.sleep(0.05)
            got += len(ws.recv(timeout=10))
        assert got == 8 << 20


def test_raw_socket_upgrade_and_early_bytes(ws_gw):
    """A client that sends frame bytes right behind its upgrade request (before the 101): they are held, then
    tunnelled once the upstream switches, not parsed as HTTP."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    # a masked text frame "hi" (RFC 6455 §5.2), sent in the same write as the handshake
    frame = bytes([0x81, 0x82, 1, 2, 3, 4]) + bytes(b ^ m for b, m in zip(b"hi", [1, 2]))
    s = socket.create_connection((ws_gw.host, ws_gw.port), timeout=5)
    try:
        s.sendall(
            (f"GET /ws/raw HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
             f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode() + frame
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(4096)
        head, _, rest = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        while len(rest) < 4:
            rest += s.recv(4096)
        assert rest[:4] == bytes([0x81, 0x02]) + b"hi"  # the echo, unmasked from the server
    finally:
        s.close()
