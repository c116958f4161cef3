"""Traffic mirroring: a copy of a route's request is sent to another service and its response is discarded.

Envoy's ``request_mirror_policies`` is the model: the client's response never waits for, or depends on, the mirror.
A mirrored request is sent once the client's request is complete (its bytes are held up to the route's
``mirror.body_limit``; a larger body is not mirrored), on a keep-alive connection of the mirror's own (``Shadows.idle``):
a mirror never takes a connection from, or leaves one in, the pools of real traffic. Failures are counted and logged
at debug level, never retried.

A worker keeps at most ``MAX_IN_FLIGHT`` mirrored requests open: a slow or dead mirror service must not pile up
memory or connections in the gateway (the excess is skipped and counted in ``Shadows.skipped``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable, Final

import httptools

from .dns import ResolveError

log = logging.getLogger("gwanmun.mirror")

MAX_IN_FLIGHT: Final = 256
MAX_IDLE: Final = 32  # idle mirror connections kept per target


class MirrorSpec:
    """A route's compiled ``mirror``: the service to shadow to, the share of requests, the body limit."""

    __slots__ = ("service", "percentage", "body_limit")

    def __init__(self, service: Any, percentage: float, body_limit: int) -> None:
        self.service = service  # runtime.Service
        self.percentage = percentage
        self.body_limit = body_limit

    def sample(self) -> bool:
        return self.percentage >= 100.0 or random.random() * 100.0 < self.percentage


class Shadows:
    """A worker's mirrored requests: their own keep-alive connections (kept apart from the main pools, so a mirror
    can never take or spoil a connection of real traffic), what is in flight, and what became of them."""

    __slots__ = ("in_flight", "sent", "answered", "failed", "skipped", "idle")

    def __init__(self) -> None:
        self.in_flight = 0
        self.sent = 0
        self.answered = 0  # a complete response was read (and discarded)
        self.failed = 0  # connect failure, timeout, reset or invalid response
        self.skipped = 0  # too many in flight
        self.idle: dict[tuple[str, int], list[Shadow]] = {}  # (address, port) -> idle connections

    def send(self, worker: Any, service: Any, head_for: Callable[[Any], bytes], body: list[bytes]) -> None:
        """Mirror a request: ``head_for(target)`` is its head for the chosen target, ``body`` what followed it."""
        if self.in_flight >= MAX_IN_FLIGHT:
            self.skipped += 1
            return
        target = service.balancer.pick(None)
        if target is None:
            self.failed += 1
            return
        self.in_flight += 1
        self.sent += 1
        data = b"".join((head_for(target), *body))
        key = (target.host, target.port)
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn.send(service, data)
        asyncio.get_running_loop().create_task(self._connect(worker, service, target, data))

    async def _connect(self, worker: Any, service: Any, target: Any, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        tls = target.tls
        try:
            addr = await worker.resolver.resolve(target.host) if target.named else target.host
            async with asyncio.timeout(service.connect_timeout):
                if tls is None:
                    _, conn = await loop.create_connection(lambda: Shadow(self, (target.host, target.port)),
                                                           addr, target.port)
                else:
                    _, conn = await loop.create_connection(lambda: Shadow(self, (target.host, target.port)),
                                                           addr, target.port, ssl=tls.context,
                                                           server_hostname=target.sni or target.host)
        except (OSError, TimeoutError, ResolveError) as exc:
            log.debug("mirror to %s failed: %s", target.label, exc)
            self.in_flight -= 1
            self.failed += 1
            return
        conn.send(service, data)

    def done(self, conn: Shadow, ok: bool, reuse: bool) -> None:
        self.in_flight -= 1
        if ok:
            self.answered += 1
        else:
            self.failed += 1
        if reuse:
            idle = self.idle.setdefault(conn.key, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                conn.close()
        self.idle.clear()


class Shadow(asyncio.Protocol):
    """A connection for mirrored requests, one at a time. The response is parsed only to frame it, so the
    connection can be kept for the next mirrored request; nothing of it is kept."""

    def __init__(self, shadows: Shadows, key: tuple[str, int]) -> None:
        self.shadows = shadows
        self.key = key
        self.transport: Any = None
        self.parser: Any = None
        self.busy = False
        self.head_only = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, service: Any, data: bytes) -> None:
        self.busy = True
        self.head_only = data.startswith(b"HEAD ")
        self.parser = httptools.HttpResponseParser(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(service.read_timeout, self._timed_out)
        self.transport.write(data)

    def _end(self, ok: bool, reuse: bool) -> None:
        if not self.busy:
            return
        self.busy = False
        self.parser = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.shadows.done(self, ok, reuse and self.transport is not None and not self.transport.is_closing())

    def _timed_out(self) -> None:
        self.timer = None
        log.debug("mirror to %s:%d timed out", *self.key)
        self._end(False, False)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # an idle connection must not speak
            self.close()
            return
        try:
            parser.feed_data(data)
        except Exception as exc:  # noqa: BLE001 - httptools' errors, an upgrade: the connection is not reusable
            log.debug("mirror to %s:%d: invalid response: %s", *self.key, exc)
            self._end(False, False)

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is not None and self.head_only and parser.get_status_code() >= 200:
            self._end(True, True)  # llhttp would wait for the body a HEAD response announces

    def on_message_complete(self) -> None:
        parser = self.parser
        if parser is None or parser.get_status_code() < 200:
            return  # an interim response, or after HEAD
        self._end(True, parser.should_keep_alive())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._end(False, False)
        idle = self.shadows.idle.get(self.key)
        if idle and self in idle:
            idle.remove(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
