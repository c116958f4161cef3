"""Upstreams that misbehave in every way a network allows (issue 4, item 9): the client gets an honest status in
about the configured time, no client connection hangs, and 1,000 such requests leak no file descriptor.

Each mode is a tiny asyncio server written for it (``Misbehaving``), so what the upstream does is exact: it refuses,
closes right after accept, resets during the head or the body, stalls during the head or the body, answers
garbage, or never answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import PeerClosed, RawConnection
from tests.fixtures.switchable import LoopServer

READ_TIMEOUT_MS = 300
CONNECT_TIMEOUT_MS = 300


class Misbehaving(LoopServer):
    """An upstream that does one bad thing on every connection, in a thread with its own event loop."""

    MODES = ("accept-close", "reset-head", "reset-body", "slow-head", "slow-body", "garbage", "never")

    def __init__(self, mode: str) -> None:
        assert mode in self.MODES
        self.mode = mode
        self._serve()

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        try:
            if mode == "accept-close":
                writer.close()
                return
            await reader.readuntil(b"\r\n\r\n")
            if mode == "reset-head":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
                await writer.drain()
                self._reset(writer)
            elif mode == "reset-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
                await writer.drain()
                await asyncio.sleep(0.01)
                self._reset(writer)
            elif mode == "slow-head":
                writer.write(b"HTTP/1.1 200 OK\r\n")
                await writer.drain()
                await reader.read()  # until the gateway gives up and closes
            elif mode == "slow-body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
                await writer.drain()
                await reader.read()
            elif mode == "garbage":
                writer.write(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
                await writer.drain()
                writer.close()
            elif mode == "never":
                await reader.read()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.transport.abort()


# mode -> (status the client sees, "cut" when the head was already sent and the connection must be closed, whether
# it should take about the read timeout)
EXPECTED = {
    "refuse": (502, False, False),
    "accept-close": (502, False, False),
    "reset-head": (502, False, False),
    "reset-body": (200, True, False),
    "slow-head": (504, False, True),
    "slow-body": (200, True, True),
    "garbage": (502, False, False),
    "never": (504, False, True),
}


@pytest.fixture(params=list(EXPECTED))
def misbehaving(request, refusing_port):
    mode = request.param
    if mode == "refuse":
        yield mode, f"http://127.0.0.1:{refusing_port.port}"
        return
    up = Misbehaving(mode)
    yield mode, up.url
    up.close()


def _gateway(gateway, url: str):
    return gateway(single_service(url, retries=0, read_timeout=READ_TIMEOUT_MS, connect_timeout=CONNECT_TIMEOUT_MS,
                                  write_timeout=READ_TIMEOUT_MS, gateway={"access_log": "off"}))


def _one(gw, timeout: float = 5.0) -> tuple[int, bool, float]:
    """(status, cut, seconds): cut when the head came but the connection closed before the body was complete."""
    t = time.monotonic()
    with RawConnection(gw.host, gw.port, timeout=timeout) as c:
        c.request("GET", "/x", [("Host", "a")])
        head = c.read_head()
        try:
            c.read_body(head)
            cut = False
        except PeerClosed:
            cut = True
        return head.status, cut, time.monotonic() - t


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_misbehaving_upstream_gets_an_honest_answer_in_time(gateway, misbehaving):
    mode, url = misbehaving
    gw = _gateway(gateway, url)
    status, cut, took = _one(gw)
    want_status, want_cut, slow = EXPECTED[mode]
    assert (status, cut) == (want_status, want_cut), mode
    timeout = READ_TIMEOUT_MS / 1000
    if slow:
        assert timeout * 0.8 <= took < timeout + 1.5, (mode, took)
    else:
        assert took < 1.0, (mode, took)
    if status >= 500:
        assert gw.request("GET", "/x").status == status  # and the gateway is still fine


def test_a_thousand_misbehaving_requests_leak_no_descriptor(gateway, misbehaving):
    """Descriptors of the worker counted before and after 1,000 such requests (50 at a time)."""
    mode, url = misbehaving
    gw = _gateway(gateway, url)
    pid = gw.worker_pid
    _one(gw)  # warm: pools, DNS, logs
    time.sleep(0.2)
    before = _fds(pid)
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: _one(gw, timeout=10)[:2], range(1000)))
    assert set(results) == {EXPECTED[mode][:2]}, (mode, set(results))
    deadline = time.monotonic() + 5
    while _fds(pid) > before and time.monotonic() < deadline:  # upstream sockets close as the loop gets to them
        time.sleep(0.1)
    assert _fds(pid) <= before, (mode, before, _fds(pid), json.dumps(sorted(os.listdir(f"/proc/{pid}/fd"))))
