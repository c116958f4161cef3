"""The client-facing HTTP/1.x protocol: parse requests with httptools and hand each one to an ``Exchange``.

Parser callbacks only record state; they never do I/O themselves (as in uvicorn). Requests are answered in order:
one exchange is active at a time, later pipelined requests wait in a queue, and reading pauses while they wait, so
a client cannot make the gateway buffer without bound.

Reading is paused for several independent reasons (pipelined requests waiting, the upstream not accepting the
body, too much body buffered before the upstream connection is ready); a bit mask keeps them apart, and reading
resumes only when none is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httptools
import orjson

from ..proxy import Exchange, error_head

if TYPE_CHECKING:
    from ..server import Worker

log = logging.getLogger("gwanmun.downstream")


class _HeadTooLarge(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class DownstreamProtocol(asyncio.Protocol):
    PAUSE_PIPELINE = 1
    PAUSE_UPSTREAM = 2
    PAUSE_BODY = 4

    __slots__ = (
        "worker",
        "transport",
        "parser",
        "client_ip",
        "peer_ip_b",
        "trusted",
        "port",
        "port_b",
        "scheme_b",
        "forwarded",
        "max_url",
        "max_head",
        "max_headers",
        "keepalive",
        "current",
        "parsing",
        "queue",
        "closing",
        "paused",
        "write_paused",
        "url",
        "headers",
        "head_size",
        "t0",
        "last_active",
        "idle_timer",
        "pending_error",
        "_advancing",
    )

    def __init__(self, worker: Worker, port: int, scheme: str = "http") -> None:
        self.worker = worker
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.peer_ip_b = b""
        self.trusted = False
        self.port = port
        self.port_b = str(port).encode()
        self.scheme_b = scheme.encode()
        self.current: Exchange | None = None  # the request being answered
        self.parsing: Exchange | None = None  # the request whose body the parser is reading
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.closing = False
        self.paused = 0
        self.write_paused = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.t0 = 0.0
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.pending_error: tuple[int, str] | None = None
        self._advancing = False

    # -- connection lifecycle ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        self.client_ip = ip
        self.peer_ip_b = ip.encode()
        worker = self.worker
        settings = worker.holder.current.settings
        self.trusted = settings.is_trusted(ip)
        self.max_url = settings.max_request_line
        self.max_head = settings.max_header_size
        self.max_headers = settings.max_headers
        self.keepalive = settings.keepalive_timeout > 0
        peer = self.peer_ip_b
        # Forwarding headers that are the same for every request of an untrusted client: built once here.
        self.forwarded = b"".join(
            (b"X-Real-IP: ", peer, b"\r\nX-Forwarded-For: ", peer, b"\r\nX-Forwarded-Proto: ", self.scheme_b,
             b"\r\nX-Forwarded-Port: ", self.port_b, b"\r\n")
        )
        worker.connections.add(self)
        self.last_active = worker.loop.time()
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.worker.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        ex = self.current
        self.current = None
        if ex is not None:
            ex.abort()
        for ex in self.queue:
            ex.finished = True
        self.queue.clear()
        self.transport = None
        self.parser = None  # type: ignore[assignment]  # holds bound methods of this protocol: break the cycle

    def data_received(self, data: bytes) -> None:
        self.last_active = self.worker.loop.time()
        while data:
            try:
                self.parser.feed_data(data)
                data = b""
            except httptools.HttpParserUpgrade as exc:
                # WebSocket and other upgrades come in a later release. Until then the request was proxied as plain
                # HTTP (Upgrade is hop-by-hop and dropped), and the parser goes on with the bytes after it.
                data = data[exc.args[0]:] if exc.args and isinstance(exc.args[0], int) else b""
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _HeadTooLarge):
                    self._bad_request(cause.status, cause.message)
                else:
                    log.error("request callback failed", exc_info=cause or exc)
                    self._bad_request(500, "internal error")
                break
            except httptools.HttpParserError as exc:
                self._bad_request(400, f"malformed request: {exc}")
                break
        ex = self.current
        if ex is not None and ex.up_buf:
            ex.flush_upstream()

    def eof_received(self) -> bool:
        # The client closed its side. As nginx (proxy_ignore_client_abort off) and Envoy do, a request in flight is
        # abandoned (logged as 499) and its upstream connection closed, instead of waiting on the upstream for a
        # client that has most likely gone. False: let the transport close; connection_lost aborts the exchange.
        return False

    # -- httptools request-parser callbacks ---------------------------------------------------------------------------
    # No on_message_begin: the request state is reset when a head is handed over (one callback less per request).
    def on_url(self, url: bytes) -> None:
        if self.url:
            url = self.url + url  # the request line arrived in pieces
        else:
            self.t0 = perf_counter()
        self.url = url
        if len(url) > self.max_url:
            raise _HeadTooLarge(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_head or len(headers) > self.max_headers:
            raise _HeadTooLarge(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        # keepalive_timeout 0 disables client keep-alive, as in nginx
        keep_alive = parser.should_keep_alive() and not self.closing and self.keepalive
        ex = Exchange(
            self,
            self.worker.holder.current,
            parser.get_method().decode("latin-1"),
            self.url,
            parser.get_http_version(),
            self.headers,
            keep_alive,
            self.t0,
        )
        # bytes received for this head: request line ("M URL HTTP/1.x" + CRLF), header lines, blank line
        ex.bytes_in = len(ex.method) + len(self.url) + 12 + self.head_size + 2
        self.url = b""
        self.headers = []
        self.head_size = 0
        self.parsing = ex
        if self.current is None and not self.queue:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause(self.PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.request_done()

    # -- flow control ------------------------------------------------------------------------------------------------
    def pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closing:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.current is not None:
            self.current.downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.current is not None:
            self.current.downstream_write_resumed()

    # -- request sequencing ------------------------------------------------------------------------------------------
    def exchange_done(self, ex: Exchange) -> None:
        """``ex`` has been answered; start the next pipelined request, or close."""
        if ex is not self.current:
            return
        self.current = None
        self.last_active = self.worker.loop.time()
        if not ex.keep_alive:
            self.close()
            return
        if self._advancing:  # called from inside _advance: it loops instead of recursing
            return
        self._advance()

    def _advance(self) -> None:
        self._advancing = True
        try:
            while self.current is None and self.transport is not None and not self.closing:
                if self.queue:
                    ex = self.queue.popleft()
                    if not self.queue:
                        self.resume(self.PAUSE_PIPELINE)
                    self.current = ex
                    ex.start()
                    if ex.up_buf:
                        ex.flush_upstream()
                    continue
                if self.pending_error is not None:
                    status, message = self.pending_error
                    self.pending_error = None
                    self._write_error(status, message)
                    return
                break
        finally:
            self._advancing = False
        if self.current is None and self.closing and self.transport is not None:
            self.close()

    def _bad_request(self, status: int, message: str) -> None:
        """The request stream is broken: answer in order, then close (RFC 9112 §9.6)."""
        self.pause(self.PAUSE_PIPELINE)
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            # The broken request's own head was fine: it is in flight or queued, and can never complete.
            if ex is self.current:
                ex.keep_alive = False
                ex.fail(status, "bad_request", message)
                return
            ex.finished = True
            if ex in self.queue:
                self.queue.remove(ex)
        if self.current is None and not self.queue:
            self._write_error(status, message)
        else:
            self.pending_error = (status, message)

    def _write_error(self, status: int, message: str) -> None:
        t = self.transport
        if t is None:
            return
        rid = self.worker.next_request_id()
        body = orjson.dumps({"message": message, "request_id": rid})
        t.write(error_head(status, len(body), rid, b"Connection: close\r\n") + body)
        self.worker.access_log.write_error(self, status, rid, len(body))
        self.close()

    def close(self) -> None:
        self.closing = True
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()  # flushes what is buffered, then closes

    def abort(self) -> None:
        self.closing = True
        t = self.transport
        if t is not None:
            t.abort()

    # -- keep-alive idle timeout ---------------------------------------------------------------------------------------
    def _arm_idle(self) -> None:
        timeout = self.worker.holder.current.settings.keepalive_timeout
        if timeout > 0:
            self.idle_timer = self.worker.loop.call_at(self.last_active + timeout, self._on_idle)

    def _on_idle(self) -> None:
        """Checked lazily: requests only bump ``last_active``; the timer re-arms itself when it fires."""
        self.idle_timer = None
        if self.transport is None:
            return
        if self.current is None and not self.queue:
            timeout = self.worker.holder.current.settings.keepalive_timeout
            if self.worker.loop.time() - self.last_active >= timeout:
                self.close()
                return
        else:
            self.last_active = self.worker.loop.time()
        self._arm_idle()
