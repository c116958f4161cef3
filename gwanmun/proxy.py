"""One proxied request: route it, pick a peer, forward it, stream the answer back.

An ``Exchange`` is a callback-driven state machine. On the fast path (a pooled upstream connection is idle) it runs
without creating a task or a future: the downstream parser calls ``start``, ``request_body`` and ``request_done``;
the upstream parser (one fresh httptools parser per exchange, with the exchange as its protocol) calls
``on_header``, ``on_headers_complete``, ``on_body`` and ``on_message_complete``. Only opening a new upstream
connection (DNS, connect, retries) runs as a task.

Writes are batched: bytes for each peer are collected in a list during one ``data_received`` and sent with one
``transport.write`` afterwards, so a small request or response costs one syscall per direction.

Errors map by source, as in Pingora: the client's fault is 4xx, an upstream failure 502, an upstream timeout 504,
no usable peer 503. Once a response head has gone downstream, an error can only close the client connection: a
truncated response is never left looking complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
from time import perf_counter
from typing import TYPE_CHECKING, Any

import httptools
import orjson

from .http.wire import (
    HOP_BY_HOP,
    IDEMPOTENT,
    LAST_CHUNK,
    STATUS_LINE,
    connection_tokens,
    status_line,
)
from .routing.paths import upstream_path
from .routing.router import requires_https
from .upstream.dns import ResolveError

if TYPE_CHECKING:
    from .http.downstream import DownstreamProtocol
    from .runtime import Runtime, Service
    from .upstream.balancer import Target
    from .upstream.connection import UpstreamConnection

log = logging.getLogger("gwanmun.proxy")

# Request bytes kept to replay a request on a fresh connection when a pooled one turns out to be dead.
REPLAY_LIMIT = 64 * 1024
# Request bytes buffered while no upstream connection is ready yet; past this, downstream reading pauses.
PENDING_LIMIT = 256 * 1024

# How each request header is treated (by lower-case name). Absent = forwarded as is.
_DROP, _HOST, _CONNECTION, _TE, _CL, _XFF, _XFPROTO, _XFHOST, _XFPORT, _XFPATH, _XFPREFIX, _VIA, _EXPECT = range(13)
_REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"keep-alive": _DROP,
    b"proxy-connection": _DROP,
    b"te": _DROP,
    b"trailer": _DROP,
    b"upgrade": _DROP,
    b"transfer-encoding": _TE,
    b"content-length": _CL,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFPROTO,
    b"x-forwarded-host": _XFHOST,
    b"x-forwarded-port": _XFPORT,
    b"x-forwarded-path": _XFPATH,
    b"x-forwarded-prefix": _XFPREFIX,
    b"x-real-ip": _DROP,
    b"forwarded": _DROP,  # RFC 7239; kept only from trusted proxies (see start)
    b"via": _VIA,
    b"expect": _EXPECT,
}

_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})

# Response body framing as received from upstream.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class Exchange:
    # Per-request state. Defaults live on the class, so creating an exchange sets only what differs: on the hot
    # path that is cheaper than initialising ~45 slots.
    rt: Any  # the Runtime this request started with
    request_id = ""
    host = ""
    path = ""
    route: Any = None  # routing.RouteEntry
    service: Any = None
    target: Any = None
    pool: Any = None
    conn: Any = None
    reused = False
    parser: Any = None  # httptools.HttpResponseParser of the current upstream response
    status = 0
    resp_mode = 0  # _NONE
    down_chunked = False
    head_sent = False
    resp_done = False
    req_done = False
    req_chunked = False
    req_has_body = False
    expect_continue = False
    up_buf: Any = None  # bytes to write upstream at the next flush (connection attached)
    pending: Any = None  # bytes waiting for a connection (None once one is attached)
    pending_size = 0
    replay: Any = None  # copy of what was sent, for a transparent retry; None once too big
    replay_size = 0
    bytes_in = 0
    bytes_out = 0
    t_up = 0.0
    t_up_end = 0.0
    last_io = 0.0
    task: Any = None
    up_read_paused = False
    finished = False
    error = ""  # why the gateway answered on its own (for the error log)

    def __init__(
        self,
        down: DownstreamProtocol,
        rt: Runtime,
        method: str,
        url: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        t0: float,
    ) -> None:
        self.down = down
        self.rt = rt  # the runtime this request started with; kept to its end
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.t0 = t0
        self.client_ip = down.client_ip
        self.out: list[bytes] = []  # bytes to write downstream at the next flush

    # ------------------------------------------------------------------------------------------------------------
    # request side (called by the downstream protocol)
    # ------------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Headers are complete and it is this request's turn: route it and begin forwarding."""
        down = self.down
        rt = self.rt
        settings = rt.settings
        trusted = down.trusted
        self.request_id = rid = down.worker.next_request_id()

        host = b""
        xff = xfproto = xfhost = xfport = xfpath = xfprefix = via = b""
        tokens: set[bytes] | None = None
        fwd: list[bytes] = []
        rid_name = settings.request_id_lower
        for name, value in self.headers:
            lname = name.lower()
            action = _REQUEST_SPECIAL.get(lname)
            if action is None:
                if lname == rid_name:
                    if trusted and value:
                        self.request_id = rid = value.decode("latin-1")
                    continue
                fwd += (name, b": ", value, b"\r\n")
            elif action == _HOST:
                if host:
                    return self.fail(400, "bad_request", "duplicate Host header")
                host = value
            elif action == _CONNECTION:
                if value.lower() in _PLAIN_CONNECTION:
                    continue
                tokens = connection_tokens(value) if tokens is None else tokens | connection_tokens(value)
            elif action == _CL:
                if value != b"0":
                    self.req_has_body = True
                fwd += (name, b": ", value, b"\r\n")
            elif action == _TE:
                # RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed. Reject it.
                if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked" or self.version == "1.0":
                    self.keep_alive = False
                    return self.fail(400, "bad_request", "unsupported Transfer-Encoding")
                self.req_chunked = self.req_has_body = True
            elif action == _EXPECT:
                # Answered here (as Envoy does): the upstream may not implement it, and a client must not wait.
                if value.lower() == b"100-continue":
                    self.expect_continue = True
                else:
                    return self.fail(417, "expectation_failed", "unsupported expectation")
            elif action == _VIA:
                via = value if not via else via + b", " + value
            elif trusted:
                if action == _XFF:
                    xff = value if not xff else xff + b", " + value
                elif action == _XFPROTO:
                    xfproto = value
                elif action == _XFHOST:
                    xfhost = value
                elif action == _XFPORT:
                    xfport = value
                elif action == _XFPATH:
                    xfpath = value
                elif action == _XFPREFIX:
                    xfprefix = value
                elif lname == b"forwarded":
                    fwd += (name, b": ", value, b"\r\n")
            # else: _DROP, or a forwarding header from an untrusted client

        if tokens:
            extra = tokens - {b"close", b"keep-alive"}
            if extra:  # RFC 9110 §7.6.1: drop every field the Connection header names
                fwd = _drop_named(fwd, extra)

        if not host and self.version == "1.1":
            return self.fail(400, "bad_request", "missing Host header")

        url = self.url
        if url[:1] == b"/":
            q = url.find(b"?")
            if q < 0:
                path_b, query = url, b""
            else:
                path_b, query = url[:q], url[q:]
        else:
            try:
                path_b, query, abs_host = _absolute_form(url)
            except ValueError:
                return self.fail(400, "bad_request", "invalid request target")
            if abs_host:  # RFC 9112 §3.2.2: the target's authority replaces Host
                host = abs_host
        self.host = host_s = host.decode("latin-1")
        self.path = path = path_b.decode("latin-1")
        if trusted and xff:
            self.client_ip = _real_ip(xff, down.client_ip, settings)

        router = rt.router
        hmap = _header_map(self.headers) if router.uses_headers else None
        match = router.match(self.method, host_s, path, "http", hmap, down.port)
        if match is None:
            return self.fail(404, "no_route", "no Route matched with those values")
        route = match.route
        self.route = route
        if "http" not in route.protocols and requires_https(route, (xfproto or down.scheme_b).decode("latin-1")):
            # Kong: an https-only route reached over plain http is refused, never served in clear.
            return self.fail(426, "https_required", "Please use HTTPS protocol")
        svc: Service = route.target
        self.service = svc
        target = svc.balancer.pick()
        if target is None:
            return self.fail(503, "no_peer", "failure to get a peer from the ring-balancer")
        self.target = target
        if self.expect_continue and not self.req_done and self.version == "1.1":
            # The request is routed and will be forwarded: now the client may send its body.
            self.expect_continue = False
            self.down.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        up_path = upstream_path(svc.path, match, path)
        if route.preserve_host and host:
            host_out = host
        else:
            host_out = target.host_header
        parts = [
            self.method.encode("latin-1"),
            b" ",
            up_path.encode("latin-1"),
            query,
            b" HTTP/1.1\r\nHost: ",
            host_out,
            b"\r\n",
        ]
        parts += fwd
        if trusted and (xff or xfproto or xfport or self.client_ip is not down.client_ip):
            peer = down.peer_ip_b
            parts += (
                b"X-Real-IP: ",
                self.client_ip.encode("latin-1"),
                b"\r\nX-Forwarded-For: ",
                xff + b", " + peer if xff else peer,
                b"\r\nX-Forwarded-Proto: ",
                xfproto or down.scheme_b,
                b"\r\nX-Forwarded-Port: ",
                xfport or down.port_b,
                b"\r\n",
            )
        else:
            parts.append(down.forwarded)  # the same for every request of this connection: built once
        parts += (
            b"X-Forwarded-Host: ",
            xfhost or _strip_port(host),
            b"\r\nX-Forwarded-Path: ",
            xfpath or path_b,
            b"\r\n",
        )
        if xfprefix:
            parts += (b"X-Forwarded-Prefix: ", xfprefix, b"\r\n")
        elif route.strip_path and match.matched_path and not match.captures:
            parts += (b"X-Forwarded-Prefix: ", match.matched_path.encode("latin-1"), b"\r\n")
        if settings.via:
            parts += (b"Via: ", via + b", 1.1 gwanmun" if via else b"1.1 gwanmun", b"\r\n")
        parts += (settings.request_id_header, b": ", rid.encode("latin-1"), b"\r\n")
        if self.req_chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)

        pending = self.pending
        if target.named:
            # Kong's rule: a name is resolved for every request (from the TTL cache), and connections are pooled
            # per resolved address, so a DNS change moves new requests at once.
            addr = down.worker.resolver.cached(target.host)
            pool = down.worker.pools.get(addr, target.port) if addr is not None else None
        else:
            pool = target.pool or down.worker.pools.for_target(target)
        self.pool = pool
        conn = pool.acquire() if pool is not None else None
        if conn is not None:
            self.reused = True
            self.pending = None
            self._attach(conn)
            self.up_buf = [head]
            self.replay = [head]
            self.replay_size = len(head)
            if pending:
                for data in pending:
                    self._send(data)
        else:
            self.pending = [head, *pending] if pending else [head]
            self.pending_size += len(head)
            self.task = asyncio.get_running_loop().create_task(self._connect(target))

    def request_body(self, data: bytes) -> None:
        if self.resp_done or self.finished:
            return  # answered already (e.g. 404); the rest of the body is read and dropped
        self.bytes_in += len(data)
        if self.req_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.conn is None:  # not started, or still connecting: keep it for later
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_LIMIT:
                self.down.pause(self.down.PAUSE_BODY)
        else:
            self._send(data)

    def request_done(self) -> None:
        self.req_done = True
        if self.req_chunked and not self.resp_done:
            if self.conn is None:
                if self.pending is None:
                    self.pending = []
                self.pending.append(LAST_CHUNK)
            else:
                self._send(LAST_CHUNK)
        if self.resp_done:
            self._finish()

    def _send(self, data: bytes) -> None:
        """Queue bytes for the attached upstream connection (flushed after the current read)."""
        self.up_buf.append(data)
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size <= REPLAY_LIMIT:
                replay.append(data)
            else:
                self.replay = None

    def flush_upstream(self) -> None:
        buf = self.up_buf
        if buf:
            conn = self.conn
            if conn is not None and conn.transport is not None:
                conn.transport.write(buf[0] if len(buf) == 1 else b"".join(buf))
            buf.clear()

    # ------------------------------------------------------------------------------------------------------------
    # upstream connection management
    # ------------------------------------------------------------------------------------------------------------
    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.exchange = self
        conn.requests += 1
        self.parser = httptools.HttpResponseParser(self)
        self.resp_headers: list = []
        self.last_io = now = conn.loop.time()
        self.t_up = perf_counter()
        due = now + self.service.read_timeout
        if conn.timer is None or conn.timer_due > due:
            conn.watch(due)

    async def _connect(self, target: Target) -> None:
        """Open a connection (cold path), retrying other targets on failure as Kong's ``retries`` says."""
        svc = self.service
        worker = self.down.worker
        tries = svc.retries + 1
        timed_out = False
        reason = ""
        for attempt in range(tries):
            if attempt:
                target = svc.balancer.pick() or target
                self.target = target
            try:
                if target.named:
                    addr = await worker.resolver.resolve(target.host)
                    pool = worker.pools.get(addr, target.port)
                else:
                    pool = target.pool or worker.pools.for_target(target)
                    addr = target.host
                conn = await pool.connect(addr, target.port, svc.connect_timeout)
            except ResolveError as exc:
                if self.finished:
                    return
                self.task = None
                return self.fail(503, "dns", "name resolution failed", detail=str(exc))
            except TimeoutError:
                timed_out = True
                reason = f"connect to {target.label} timed out"
                continue
            except OSError as exc:
                timed_out = False
                reason = f"connect to {target.label} failed: {exc.strerror or exc}"
                continue
            if self.finished:  # the client went away meanwhile
                pool.release(conn, worker.loop.time())
                return
            self.task = None
            self.pool = pool
            self._attach(conn)
            pending = self.pending or ()
            self.pending = None
            self.up_buf = []
            self.replay = []
            self.replay_size = 0
            for data in pending:
                self._send(data)
            self.flush_upstream()
            if self.pending_size > PENDING_LIMIT:
                self.down.resume(self.down.PAUSE_BODY)
            return
        self.task = None
        if not self.finished:
            if timed_out:
                self.fail(504, "upstream_timeout", "The upstream server is timing out", detail=reason)
            else:
                self.fail(502, "upstream_error", "An invalid response was received from the upstream server",
                          detail=reason)

    def _retry_fresh(self, why: str) -> bool:
        """A reused connection died before answering: replay the request on a new one, if that is safe.

        Safe means: an idempotent method, nothing of the response seen, and everything sent so far still held
        (at most ``REPLAY_LIMIT`` bytes). The rest of a body still arriving queues in ``pending`` meanwhile.
        """
        if (
            not self.reused
            or self.replay is None
            or self.head_sent
            or self.status
            or self.method not in IDEMPOTENT
        ):
            return False
        log.debug("pooled connection to %s was closed (%s); retrying on a new one", self.target.label, why)
        conn = self.conn
        self.conn = None
        if conn is not None:
            self.pool.drop(conn)
        self.reused = False
        self.pending = self.replay
        self.pending_size = self.replay_size
        self.replay = None
        self.replay_size = 0
        self.resp_headers = []
        self.task = asyncio.get_running_loop().create_task(self._connect(self.target))
        return True

    def _release_upstream(self) -> None:
        conn = self.conn
        if conn is None:
            return
        self.conn = None
        self.t_up_end = perf_counter()
        if self.up_read_paused:
            self.up_read_paused = False
            if conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()
        parser = self.parser
        if (
            self.req_done
            and self.resp_mode != _UNTIL_CLOSE
            and parser is not None
            and parser.should_keep_alive()
            and not conn.paused
        ):
            self.pool.release(conn, self.down.worker.loop.time())
        else:
            self.pool.drop(conn)

    # ------------------------------------------------------------------------------------------------------------
    # upstream side (called by UpstreamConnection and by the response parser)
    # ------------------------------------------------------------------------------------------------------------
    def upstream_data(self, data: bytes) -> None:
        self.last_io = self.down.worker.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upstream_failed(502, "upstream_error", "upstream switched protocols unasked")
        except httptools.HttpParserError as exc:
            self._upstream_failed(502, "upstream_error", "An invalid response was received from the upstream server",
                                  detail=f"invalid response from {self.target.label}: {exc}")
        self.flush_downstream()

    def upstream_eof(self) -> None:
        if self.resp_mode == _UNTIL_CLOSE and self.status:
            self.on_message_complete()
            self.flush_downstream()
        else:
            self._upstream_closed("upstream closed the connection")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.resp_done or self.finished:
            return
        if self.resp_mode == _UNTIL_CLOSE and self.status and exc is None:
            self.on_message_complete()
            self.flush_downstream()
            return
        self._upstream_closed(f"connection lost: {exc}" if exc else "upstream closed the connection")

    def _upstream_closed(self, why: str) -> None:
        if self.resp_done or self.finished:
            return
        if self._retry_fresh(why):
            return
        self._upstream_failed(502, "upstream_error", "An invalid response was received from the upstream server",
                              detail=f"{self.target.label}: {why}")

    def upstream_write_paused(self) -> None:
        """The upstream stopped taking the body: stop reading it from the client, and start the write timeout."""
        self.down.pause(self.down.PAUSE_UPSTREAM)
        conn = self.conn
        if conn is not None:
            self.last_io = now = conn.loop.time()
            due = now + self.service.write_timeout
            if conn.timer is None or conn.timer_due > due:
                conn.watch(due)

    def upstream_write_resumed(self) -> None:
        self.last_io = self.down.worker.loop.time()
        self.down.resume(self.down.PAUSE_UPSTREAM)

    # httptools response-parser callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        headers = self.resp_headers
        self.resp_headers = []
        if status < 200:
            if status == 101:
                raise httptools.HttpParserUpgrade("101 without an upgrade request")
            if self.version == "1.1":  # relay 1xx (100 Continue, 103 Early Hints) to HTTP/1.1 clients
                self.out.append(status_line(status) + _filter_head(headers) + b"\r\n")
            return
        self.status = status
        rid_name = self.rt.settings.request_id_lower
        tokens = None
        chunked = False
        length = False
        parts = [STATUS_LINE.get(status) or status_line(status)]
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    chunked = True
                elif lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                    tokens = connection_tokens(value) if tokens is None else tokens | connection_tokens(value)
                continue
            if lname == b"content-length":
                length = True
            elif lname == rid_name:
                continue  # ours is the one that counts (and it is in the log)
            parts += (name, b": ", value, b"\r\n")
        if tokens:
            extra = tokens - {b"close", b"keep-alive"}
            if extra:
                parts = [parts[0], *_drop_named(parts[1:], extra)]

        if self.method == "HEAD" or status == 204 or status == 304:
            mode = _NONE
        elif chunked:
            mode = _CHUNKED
        elif length:
            mode = _LENGTH
        else:
            mode = _UNTIL_CLOSE
        self.resp_mode = mode
        if mode == _CHUNKED or mode == _UNTIL_CLOSE:
            if self.version == "1.1":
                self.down_chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to the close
        if self.expect_continue and not self.req_done:
            self.keep_alive = False  # the client may never send the body it announced
        settings = self.rt.settings
        if settings.via:
            parts.append(b"Via: 1.1 gwanmun\r\n")
        parts += (settings.request_id_header, b": ", self.request_id.encode("latin-1"), b"\r\n")
        if not self.keep_alive or self.down.closing:
            self.keep_alive = False
            parts.append(b"Connection: close\r\n\r\n")
        elif self.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        head = b"".join(parts)
        self.bytes_out += len(head)
        self.out.append(head)
        self.head_sent = True
        if mode == _NONE and self.method == "HEAD":
            # llhttp cannot be told a response answers HEAD, so it would wait for the announced body: end here.
            self.on_message_complete()

    def on_body(self, data: bytes) -> None:
        if self.resp_done:
            return
        self.bytes_out += len(data)
        if self.down_chunked:
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if not self.status or self.resp_done:
            return  # end of a 1xx interim response, or a HEAD response already ended
        if self.down_chunked:
            self.out.append(LAST_CHUNK)
        self.resp_done = True
        self._release_upstream()
        if self.req_has_body and not self.req_done:
            # The upstream answered before the request body ended: close the client connection after the reply
            # rather than read and drop a body of unknown size.
            self.keep_alive = False
        self._finish()

    def flush_downstream(self) -> None:
        out = self.out
        if out:
            t = self.down.transport
            if t is not None and not t.is_closing():
                t.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # ------------------------------------------------------------------------------------------------------------
    # timeouts, flow control, errors, completion
    # ------------------------------------------------------------------------------------------------------------
    def on_timer(self) -> None:
        """Upstream read/write timeout, checked lazily (see ``UpstreamConnection.watch``)."""
        conn = self.conn
        if self.finished or self.resp_done or conn is None:
            return
        loop = self.down.worker.loop
        now = loop.time()
        svc = self.service
        limit = svc.write_timeout if conn.paused else svc.read_timeout
        if self.up_read_paused:  # we paused the upstream for a slow client: not the upstream's fault
            self.last_io = now
        due = self.last_io + limit
        if now < due:
            conn.watch(due)
            return
        self._upstream_failed(504, "upstream_timeout", "The upstream server is timing out",
                              detail=f"{self.target.label}: no data for {limit:g}s")
        self.flush_downstream()

    def downstream_write_paused(self) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not self.up_read_paused:
            self.up_read_paused = True
            conn.transport.pause_reading()

    def downstream_write_resumed(self) -> None:
        conn = self.conn
        if self.up_read_paused:
            self.up_read_paused = False
            if conn is not None and conn.transport is not None and not conn.closed:
                conn.transport.resume_reading()

    def _upstream_failed(self, status: int, code: str, message: str, detail: str = "") -> None:
        if self.conn is not None:
            self.t_up_end = perf_counter()
        self.fail(status, code, message, detail=detail)

    def _drop_upstream(self) -> None:
        """Stop a connect in progress and close the upstream connection: with a response pending it is unusable."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        conn = self.conn
        if conn is not None:
            self.conn = None
            self.pool.drop(conn)

    def fail(self, status: int, code: str, message: str, detail: str = "") -> None:
        """Answer with a JSON error, or, if the response has begun, cut the client connection."""
        if self.finished:
            return
        self.error = detail or message
        if detail:
            log.warning("request %s: %s (%s)", self.request_id, message, detail)
        self._drop_upstream()
        if self.head_sent:
            self.keep_alive = False
            self.resp_done = True
            self.flush_downstream()
            self.down.abort()
            self._finish()
            return
        if not self.request_id:
            self.request_id = self.down.worker.next_request_id()
        self.status = status
        if self.down.closing or (self.req_has_body and not self.req_done):
            self.keep_alive = False
        body = orjson.dumps({"message": message, "request_id": self.request_id})
        if not self.keep_alive:
            connection = b"Connection: close\r\n"
        elif self.version == "1.0":
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        head = error_head(status, len(body), self.request_id, connection)
        self.out.append(head if self.method == "HEAD" else head + body)
        self.bytes_out += len(head) + len(body)
        self.head_sent = True
        self.resp_done = True
        self._finish()

    def _finish(self) -> None:
        """Response sent (or abandoned). Log once, then hand the connection to the next request."""
        if self.finished:
            return
        if not self.resp_done or not (self.req_done or not self.keep_alive):
            return
        self.finished = True
        # The response parser holds bound methods of this exchange: a reference cycle that only the cyclic GC
        # would free. Breaking it here lets plain reference counting free the exchange at once.
        self.parser = None
        self.flush_downstream()
        worker = self.down.worker
        if not self.t_up_end and self.t_up:
            self.t_up_end = perf_counter()
        worker.access_log.write(self)
        self.down.exchange_done(self)

    def abort(self) -> None:
        """The client connection is gone: drop the upstream side, log what we know."""
        if self.finished:
            return
        self._drop_upstream()
        if not self.status:
            self.status = 499  # nginx's "client closed request"
        self.resp_done = self.req_done = True
        self.keep_alive = False
        self.out.clear()
        self._finish()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Exchange {self.request_id} {self.method} {self.url!r} status={self.status}>"


class RequestIds:
    """Request ids: a random per-process prefix and a counter.

    Unique across workers and nodes, and unlike uuid4() it costs no getrandom() syscall per request.
    """

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex() + "-"
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return self.prefix + str(self.count)


def error_head(status: int, length: int, request_id: str, connection: bytes) -> bytes:
    """Head of a JSON error response; ``connection`` is a whole ``Connection:`` line, or b"" for none."""
    return b"".join(
        (
            status_line(status),
            b"Content-Type: application/json; charset=utf-8\r\nContent-Length: ",
            str(length).encode(),
            b"\r\nX-Request-ID: ",
            request_id.encode("latin-1"),
            b"\r\n",
            connection,
            b"\r\n",
        )
    )


# ---------------------------------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------------------------------
def _drop_named(parts: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove the fields named in ``names`` from a flat [name, ': ', value, CRLF, ...] list."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
    return out


def _filter_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%b: %b\r\n" % (n, v) for n, v in headers if n.lower() not in HOP_BY_HOP)


def _header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    m: dict[str, list[str]] = {}
    for name, value in headers:
        m.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return m


def _strip_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    i = host.rfind(b":")
    return host[:i] if i >= 0 else host


def _absolute_form(url: bytes) -> tuple[bytes, bytes, bytes]:
    """``http://host:port/p?q`` -> (path, '?q', 'host:port'). Raises ValueError when it is not a URL."""
    if url == b"*":
        return b"*", b"", b""
    try:
        # Any: httptools' stub types port as int, but it is None when absent (and compiled code trusts stubs)
        u: Any = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError as exc:
        raise ValueError(str(exc)) from None
    if not u.schema or u.schema.lower() not in (b"http", b"https") or not u.host:
        raise ValueError("not an absolute http URL")
    host = u.host if u.port is None else b"%b:%d" % (u.host, u.port)
    return u.path or b"/", (b"?" + u.query) if u.query else b"", host


def _real_ip(xff: bytes, peer: str, settings) -> str:
    """The client address behind trusted proxies: the right-most X-Forwarded-For entry that is not trusted."""
    hops = [h.strip().decode("latin-1") for h in xff.split(b",") if h.strip()]
    for hop in reversed(hops):
        if not settings.is_trusted(hop):
            return hop
    return hops[0] if hops else peer
