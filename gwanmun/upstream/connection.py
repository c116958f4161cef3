"""One TCP connection to an upstream target, used by one exchange at a time.

The connection owns the httptools response parser: llhttp carries on from one response to the next on a keep-alive
connection, so an exchange does not pay for building a parser (which looks up every callback by name). The
parser's callbacks land here and are passed to the exchange being served, by direct (compiled) calls. A response
to HEAD is the one case llhttp cannot follow (it would wait for the announced body): the exchange then discards the
parser, and the next exchange gets a fresh one. The connection otherwise only moves bytes, tracks liveness, and
reports flow control to the exchange that holds it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:
    from ..proxy import Exchange
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
        "parser",
        "reader",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.exchange: Exchange | None = None  # the exchange using this connection, or None when idle
        self.requests = 0  # exchanges served so far
        self.idle_since = 0.0
        self.closed = False
        self.paused = False  # upstream writes are paused: its socket buffer is full
        self.loop: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = 0.0
        self.parser: Any = None  # httptools.HttpResponseParser, made on first use (see response_parser)
        self.reader: Any = None  # the exchange that the bytes being parsed were read for (see on_message_begin)

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
        self.reader = ex
        ex.upstream_data(data)
        self.reader = None

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
        self.parser = None

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

    # -- httptools response-parser callbacks, passed to the exchange ---------------------------------------------
    def response_parser(self) -> Any:
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpResponseParser(self)
        return parser

    def on_message_begin(self) -> None:
        # A response may only begin for the exchange its bytes were read for. After a complete response, the rest
        # of the same read is stray: the connection may by now be idle, or already serve the next (pipelined)
        # request, whose answer cannot have been read before that request was even sent.
        ex = self.exchange
        if ex is None or ex is not self.reader:
            self._unsolicited()

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is None:
            return self._unsolicited()
        ex.on_header(name, value)

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return self._unsolicited()
        ex.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:
            return self._unsolicited()
        ex.on_body(data)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_message_complete()

    def _unsolicited(self) -> None:
        """Bytes after the end of a response, in the same read: never let them reach the next exchange.

        The connection is closed; an exchange that already took it hears so as from a closed pooled connection
        (and replays its request on a new one when that is safe).
        """
        ex = self.exchange
        self.close()
        if ex is not None:
            ex.upstream_lost(None)

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
        self.parser = None  # it holds bound methods of this connection: break the cycle
        t = self.transport
        if t is not None:
            t.abort()
