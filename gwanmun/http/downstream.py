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

from ..proxy import Exchange, strip_port, error_head

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
    PAUSE_UPGRADE = 8  # an upgrade request awaits the upstream's answer: what follows is held, not parsed

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
        "host_seen",
        "host_fwd",
        "log_host",
        "log_host_json",
        "newest",
        "upgrade_ex",
        "held",
        "tunnel",
        "in_head",
        "head_t0",
        "timer_due",
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
        self.host_seen = b""  # the last Host value, and its X-Forwarded-Host form (keep-alive clients repeat it)
        self.host_fwd = b""
        self.log_host = ""  # the last Host, and it JSON-encoded, for the access log
        self.log_host_json = b'""'
        self.newest: Exchange | None = None  # the exchange of the last complete head
        self.upgrade_ex: Exchange | None = None  # an upgrade request waiting for the upstream's answer
        self.held = b""  # bytes the client sent after that request, held until the answer (see data_received)
        self.tunnel: Exchange | None = None  # the exchange that switched protocols: bytes now pass through it
        self.in_head = False  # a request head has begun and is not complete (for client_header_timeout)
        self.head_t0 = 0.0
        self.timer_due = 0.0

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
        if 0 < settings.max_connections < len(worker.connections):
            # Over this worker's cap: answer at once and close, rather than serve slowly (Envoy's overload
            # manager answers 503 too); the cap protects what the worker already serves.
            self._write_error(503, "too many connections")
            return
        self._arm_timer(self.last_active + settings.keepalive_timeout)

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
        tunnel = self.tunnel
        if tunnel is not None:  # a switched protocol (WebSocket): pass the bytes through
            tunnel.tunnel_up(data)
            return
        if self.upgrade_ex is not None:
            self.held += data  # reading is paused; this is what was already on its way
            return
        while data:
            try:
                self.parser.feed_data(data)
                data = b""
            except httptools.HttpParserUpgrade as exc:
                # A request with "Connection: upgrade" (or CONNECT) is complete. Whatever follows it is not
                # HTTP unless the upstream refuses the upgrade, so it is held, unparsed, until the upstream
                # answers: 101 makes the connection a tunnel (see start_tunnel), anything else resumes HTTP
                # parsing with the held bytes (exchange_done). Never guessing closes WebSocket smuggling.
                rest = data[exc.args[0]:] if exc.args and isinstance(exc.args[0], int) else b""
                ex = self.newest
                if ex is not None and not ex.finished and not self.closing:
                    self.upgrade_ex = ex
                    self.held = rest
                    self.pause(self.PAUSE_UPGRADE)
                    break
                data = rest
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
        if self.in_head or self.parsing is not None:
            self._watch_client()

    def eof_received(self) -> bool:
        # The client closed its side. As nginx (proxy_ignore_client_abort off) and Envoy do, a request in flight is
        # abandoned (logged as 499) and its upstream connection closed, instead of waiting on the upstream for a
        # client that has most likely gone. False: let the transport close; connection_lost aborts the exchange.
        return False

    # -- httptools request-parser callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head = True  # client_header_timeout counts from the read that began the head
        self.head_t0 = self.last_active

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
        self.in_head = False
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
        self.newest = ex
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

    def forwarded_host(self, host: bytes) -> bytes:
        """``host`` without its port, for X-Forwarded-Host; remembered, since a connection rarely changes Host."""
        if host != self.host_seen:
            self.host_seen = host
            self.host_fwd = strip_port(host)
        return self.host_fwd

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
                self.last_active = self.worker.loop.time()  # a wait we imposed is not the client's idle time

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.current is not None:
            self.current.downstream_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.current is not None:
            self.current.downstream_write_resumed()
        elif self.queue and not self._advancing:
            self._advance()  # a pipelined request held back while the client was not reading

    # -- request sequencing ------------------------------------------------------------------------------------------
    def exchange_done(self, ex: Exchange) -> None:
        """``ex`` has been answered; start the next pipelined request, or close."""
        if ex is not self.current:
            return
        self.current = None
        self.last_active = self.worker.loop.time()
        if self.tunnel is ex:
            self.tunnel = None
        if not ex.keep_alive:
            self.close()
            return
        if ex is self.upgrade_ex:
            # The upstream did not switch protocols: the connection stays HTTP, and what the client sent after
            # the upgrade request is parsed as HTTP now.
            self.upgrade_ex = None
            held = self.held
            self.held = b""
            self.resume(self.PAUSE_UPGRADE)
            if held:
                self.data_received(held)
                if self._answering():  # the held bytes began a request, already started
                    return
        if self._advancing:  # called from inside _advance: it loops instead of recursing
            return
        self._advance()

    def _answering(self) -> bool:
        """``self.current is not None``, read afresh: after ``self.current = None`` in the caller, mypy narrows the
        attribute to None and compiled code would reject the exchange a nested call has set since."""
        return self.current is not None

    def _advance(self) -> None:
        self._advancing = True
        try:
            while self.current is None and self.transport is not None and not self.closing:
                if self.queue:
                    if self.write_paused:
                        # The client has not read the last response yet: fetching the next one would only buffer
                        # it here. resume_writing starts it.
                        break
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

    # -- protocol switch (WebSocket) ------------------------------------------------------------------------------
    def start_tunnel(self, ex: Exchange) -> None:
        """The upstream answered 101 to ``ex``: from now on bytes pass through, in both directions."""
        self.tunnel = ex
        self.upgrade_ex = None
        held = self.held
        self.held = b""
        self.resume(self.PAUSE_UPGRADE)
        if held:
            ex.tunnel_up(held)

    # -- client timeouts -------------------------------------------------------------------------------------------
    # One lazy timer per connection, as nginx checks its timers: requests only record times (``last_active``,
    # ``head_t0``), and the timer re-arms itself for whichever deadline applies when it fires. Only a head or body
    # still incomplete after a read may need it sooner (``_watch_client``), which the usual one-read request never
    # pays for.
    def _arm_timer(self, due: float) -> None:
        settings = self.worker.holder.current.settings
        if settings.keepalive_timeout <= 0 and settings.client_header_timeout <= 0 and settings.client_body_timeout <= 0:
            return
        timer = self.idle_timer
        if timer is not None:
            if self.timer_due <= due:
                return
            timer.cancel()
        self.timer_due = due
        self.idle_timer = self.worker.loop.call_at(due, self._on_timer)

    def _watch_client(self) -> None:
        settings = self.worker.holder.current.settings
        if self.in_head:
            if settings.client_header_timeout > 0:
                self._arm_timer(self.head_t0 + settings.client_header_timeout)
        elif settings.client_body_timeout > 0:
            self._arm_timer(self.last_active + settings.client_body_timeout)

    def _on_timer(self) -> None:
        self.idle_timer = None
        if self.transport is None or self.closing:
            return
        settings = self.worker.holder.current.settings
        now = self.worker.loop.time()
        keepalive = settings.keepalive_timeout
        if self.tunnel is not None:
            due = now + (keepalive if keepalive > 0 else 60.0)  # the tunnel's idle timeout is the exchange's
        elif self.in_head and settings.client_header_timeout > 0:
            due = self.head_t0 + settings.client_header_timeout
            if now >= due:
                return self._bad_request(408, "request header timeout")  # slowloris: answered, then closed
        elif self.parsing is not None and not self.paused and settings.client_body_timeout > 0:
            due = self.last_active + settings.client_body_timeout
            if now >= due:
                return self._bad_request(408, "request body timeout")
        elif self.current is None and not self.queue and keepalive > 0:
            due = self.last_active + keepalive
            if now >= due:
                self.close()
                return
        else:
            due = now + (keepalive if keepalive > 0 else 60.0)  # a request in flight: upstream timeouts apply
        self._arm_timer(due)
