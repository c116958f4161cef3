"""One TCP connection to an upstream target, used by one exchange at a time.

The connection does not parse: each exchange brings its own httptools response parser (a fresh parser is cheaper
than resetting llhttp's state by hand, and it makes HEAD responses simple). The connection only moves bytes, tracks
liveness, and reports flow control to the exchange that holds it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pool import Pool


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "pool",
        "transport",
        "exchange",
        "requests",
        "idle_since",
        "closed",
        "paused",
        "loop",
        "timer",
        "timer_due",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.exchange: Any = None  # the proxy Exchange using this connection, or None when idle
        self.requests = 0  # exchanges served so far
        self.idle_since = 0.0
        self.closed = False
        self.paused = False  # upstream writes are paused: its socket buffer is full
        self.loop: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            # An idle upstream must not speak. Whatever it sent (a late body, a 408) makes the connection unusable.
            self.close()
            return
        ex.upstream_data(data)

    def eof_received(self) -> bool:
        ex = self.exchange
        self.closed = True
        self.pool.discard(self)
        if ex is not None:
            ex.upstream_eof()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool.discard(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_paused()

    def resume_writing(self) -> None:
        self.paused = False
        ex = self.exchange
        if ex is not None:
            ex.upstream_write_resumed()

    # -- used by the pool and the exchange --------------------------------------------------------------------------
    def watch(self, due: float) -> None:
        """Make sure the exchange's ``on_timer`` runs no later than ``due`` (loop time).

        Timeouts are checked lazily, as nginx does: requests only record activity times, and the one timer of a
        connection is re-armed when it fires (or when a shorter deadline arrives). With a steady timeout a busy
        connection re-arms once per timeout period instead of arming and cancelling a timer per request.
        """
        timer = self.timer
        if timer is None or self.timer_due > due:
            if timer is not None:
                timer.cancel()
            self.timer_due = due
            self.timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        ex = self.exchange
        if ex is not None:
            ex.on_timer()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
        self.exchange = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        t = self.transport
        if t is not None:
            t.abort()
