"""One proxied request: route it, pick a peer, forward it, stream the answer back.

An ``Exchange`` is a callback-driven state machine. On the fast path (a pooled upstream connection is idle) it runs
without creating a task or a future: the downstream parser calls ``start``, ``request_body`` and ``request_done``;
the upstream parser (owned by the upstream connection, which passes its callbacks on) calls
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
from typing import TYPE_CHECKING, Any, Final

import httptools
import orjson

from .http.wire import (
    F_CL,
    F_CONNECTION,
    F_EXPECT,
    F_FORWARD,
    F_FORWARDED,
    F_HOST,
    F_IDENTITY,
    F_REQUEST_ID,
    F_TE,
    F_UPGRADE,
    F_VIA,
    F_XFF,
    F_XFHOST,
    F_XFPATH,
    F_XFPORT,
    F_XFPREFIX,
    F_XFPROTO,
    IDEMPOTENT,
    LAST_CHUNK,
    STATUS_LINE,
    connection_tokens,
    status_line,
)
from .http.normalize import split_target
from .plugins.base import Ctx, Headers, Reply, Response
from .plugins.chain import Chain
from .plugins.context import _lines
from .http.validate import check_request_head
from .routing.paths import upstream_path
from .upstream.balancer import Balancer
from .upstream.hashing import hash_key
from .routing.router import requires_https
from .upstream.dns import ResolveError
from .resilience.breaker import retry_after_header
from .resilience.fallback import BULKHEAD_FULL as FB_BULKHEAD_FULL
from .resilience.fallback import CIRCUIT_OPEN as FB_CIRCUIT_OPEN
from .resilience.fallback import NO_HEALTHY_TARGET as FB_NO_HEALTHY_TARGET
from .resilience.fallback import RETRIES_EXHAUSTED as FB_RETRIES_EXHAUSTED
from .resilience.retry import RETRY, pick_excluding
from .observability.errorlog import upstream_failed
from .observability.recorder import Recorder

if TYPE_CHECKING:
    from .http.downstream import DownstreamProtocol
    from .runtime import Runtime, Service
    from .upstream.balancer import Target
    from .upstream.connection import UpstreamConnection

log = logging.getLogger("gwanmun.proxy")

# Request bytes kept to replay a request on a fresh connection when a pooled one turns out to be dead.
REPLAY_LIMIT: Final = 64 * 1024
# Request bytes buffered while no upstream connection is ready yet; past this, downstream reading pauses.
PENDING_LIMIT: Final = 256 * 1024
# Bodies held whole for plugins that read or rewrite them (request-transformer, response-transformer).
REQUEST_BUFFER_LIMIT: Final = 8 * 1024 * 1024
RESPONSE_BUFFER_LIMIT: Final = 8 * 1024 * 1024
_LENGTH_FIELD: Final = {b"content-length"}

_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})

# Response body framing as received from upstream.
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3


class _ResponseHeadTooLarge(Exception):
    pass


class Exchange:
    # Per-request state. Defaults live on the class, so creating an exchange sets only what differs: on the hot
    # path that is cheaper than initialising ~45 slots.
    rt: Any  # the Runtime this request started with
    request_id = ""
    rid_client = False  # the request id came from a trusted proxy (so the log must escape it)
    upgrade = b""  # the Upgrade asked for (e.g. b"websocket"), when this is a protocol-switch request
    tunneling = False  # the upstream answered 101: bytes now pass through both ways
    resp_upgrade = b""  # the upstream's Upgrade field
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
    balanced = False  # the balancer was told a try started and not yet that it ended
    t_pick = 0.0
    set_cookie = b""  # consistent-hashing's sticky cookie to set in the response
    delayed = False  # a fault delay was applied (start runs a second time after it)
    deadline = 0.0  # loop time by which the whole request must be answered (service/route request_timeout); 0: none
    last_io = 0.0
    resp_table: Any = None  # response field name -> class (Settings.response_fields)
    resp_lines: Any = None  # forwarded fields of the response head being read, as finished lines
    resp_length = False  # it has Content-Length
    resp_chunked = False  # it has Transfer-Encoding
    resp_tokens: Any = None  # extra Connection tokens (fields to drop), or None
    resp_budget = 0  # bytes of fields still allowed in this head
    resp_room = 0  # fields still allowed in this head
    task: Any = None
    up_read_paused = False
    finished = False
    error = ""  # why the gateway answered on its own (for the error log)
    # what every try of this request needs to build its head (set by start)
    match: Any = None
    host_b = b""
    path_b = b""
    query = b""
    head_tail = b""  # the upstream head after its Host line
    head_len = 0  # length of the head at pending[0] / replay[0]; 0: not built yet
    replay_limit = REPLAY_LIMIT
    # resilience (docs/resilience.md): all None / -1 for a service without it, so it costs nothing there
    t_try = 0.0  # loop time the current try began (a breaker's call duration)
    breaker: Any = None  # the service's CircuitBreaker
    permit = -1  # its permit for the current try; -1: none held
    tbreakers = False  # the service has per-target breakers
    tbreaker: Any = None  # the current target's CircuitBreaker
    tpermit = -1
    policy: Any = None  # the service's RetryPolicy
    tries = 0  # retries done by the policy (Kong's connect retries not counted)
    tried: Any = None  # targets tried so far, for a retry to pick another
    retry_timer: Any = None  # a backoff in progress
    bulkhead: Any = None
    ticket: Any = None  # the bulkhead's ticket (queued or granted)
    slot = False  # holds a bulkhead slot taken without a ticket (Bulkhead.try_acquire)
    fell_back = False  # a fallback was used: no second one
    mirror: Any = None  # upstream.mirror.MirrorSpec when this request is mirrored
    mirror_buf: Any = None  # the request body as sent, for the mirror; None: not mirrored (or too big)
    mirror_size = 0
    # plugins (gwanmun/plugins): all None for a route without any
    chain: Any = None  # plugins.chain.Chain
    ctx: Any = None  # plugins.base.Ctx
    ai = 0  # the next access handler to run
    access_done = False
    fwd: Any = None  # forwarded request fields (flat list), joined once the access phase is over
    conn_named: Any = None  # fields the client's Connection header named (dropped)
    tail_rest = b""  # the head tail after the forwarded fields
    fwd_b = b""  # ``fwd`` joined, as it came: the head when no plugin changed a field
    req_buf: Any = None  # the raw request body, for plugins that read it whole
    req_buf_size = 0
    resp_buf: Any = None  # the response body, for plugins that rewrite it
    resp_buf_size = 0
    resp_obj: Any = None  # plugins.base.Response of the head held while its body is buffered
    resp_head = b""  # that head
    in_reply = False
    spoofed = False  # the client sent a field only the gateway may set (X-Consumer-ID, X-Passport, ...)
    up_override: Any = None  # a plugin's upstream path (bytes), replacing the routed one
    up_host = b""  # a plugin's upstream Host
    max_body = -1  # a plugin's limit on the streamed request body (request-size-limiting); -1: none
    body_seen = 0  # request body bytes received (counted only under such a limit)
    span: Any = None  # observability.tracing.SpanInfo while this request is traced (sampled); None otherwise
    recorder: Any = None  # the worker's observability.recorder.Recorder, once start has run

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
        rid = self.request_id or down.worker.next_request_id()  # kept when a fault delay runs start again
        self.request_id = rid

        host = b""
        xff = xfproto = xfhost = xfport = xfpath = xfprefix = via = upgrade = b""
        tokens: set[bytes] | None = None
        fwd: list[bytes] = []
        # What llhttp lets through (http/validate.py): a bad version, Host or Transfer-Encoding is refused, and
        # fields named with "_" are dropped (in place) unless configured, before anything reads the fields.
        refused = check_request_head(self.version, self.headers, settings.underscores_in_headers)
        if refused is not None:
            self.keep_alive = False
            return self.fail(refused[0], "bad_request", refused[1])
        trace: bytes = b""
        recorder: Recorder = down.worker.recorder
        self.recorder = recorder
        tracing: Any = recorder.tracing
        if tracing is not None:  # OpenTelemetry (observability/tracing.py): the traceparent to send upstream
            trace = tracing.begin(self)
        table: dict[bytes, int] = settings.request_fields  # typed: compiled code then uses dict primitives
        for name, value in self.headers:
            action = table.get(name)
            if action is None:
                action = table.get(name.lower(), F_FORWARD)
            if action == F_FORWARD:
                fwd += (name, b": ", value, b"\r\n")
            elif action == F_HOST:
                if host:
                    return self.fail(400, "bad_request", "duplicate Host header")
                host = value
            elif action == F_CONNECTION:
                if value == b"keep-alive" or value == b"close" or value.lower() in _PLAIN_CONNECTION:
                    continue
                tokens = connection_tokens(value) if tokens is None else tokens | connection_tokens(value)
            elif action == F_CL:
                if value != b"0":
                    self.req_has_body = True
                fwd += (name, b": ", value, b"\r\n")
            elif action == F_TE:
                # RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed. Reject it.
                if value.rsplit(b",", 1)[-1].strip().lower() != b"chunked" or self.version == "1.0":
                    self.keep_alive = False
                    return self.fail(400, "bad_request", "unsupported Transfer-Encoding")
                self.req_chunked = self.req_has_body = True
            elif action == F_EXPECT:
                # Answered here (as Envoy does): the upstream may not implement it, and a client must not wait.
                if value.lower() == b"100-continue":
                    self.expect_continue = True
                else:
                    return self.fail(417, "expectation_failed", "unsupported expectation")
            elif action == F_VIA:
                via = value if not via else via + b", " + value
            elif action == F_UPGRADE:
                upgrade = value
            elif action == F_IDENTITY:
                self.spoofed = True  # dropped; noted so that plugins do not see it either
            elif trusted:
                if action == F_REQUEST_ID:
                    if value:
                        self.request_id = rid = value.decode("latin-1")
                        self.rid_client = True
                elif action == F_XFF:
                    xff = value if not xff else xff + b", " + value
                elif action == F_XFPROTO:
                    xfproto = value
                elif action == F_XFHOST:
                    xfhost = value
                elif action == F_XFPORT:
                    xfport = value
                elif action == F_XFPATH:
                    xfpath = value
                elif action == F_XFPREFIX:
                    xfprefix = value
                elif action == F_FORWARDED:
                    fwd += (name, b": ", value, b"\r\n")
            # else: hop-by-hop (F_DROP), or a forwarding field or request id from an untrusted client

        if upgrade and tokens and b"upgrade" in tokens and self.method == "GET" and self.version == "1.1":
            # A protocol switch (RFC 9110 §7.8), e.g. WebSocket: Upgrade and "Connection: upgrade" are forwarded,
            # and the connection becomes a tunnel only if the upstream answers 101 (on_headers_complete).
            self.upgrade = upgrade
        if tokens:
            extra = tokens - {b"close", b"keep-alive"}
            if extra:  # RFC 9110 §7.6.1: drop every field the Connection header names
                fwd = _drop_named(fwd, extra)

        if not host and self.version == "1.1":
            return self.fail(400, "bad_request", "missing Host header")

        # The path is normalised once, here (http/normalize.py): routing, the log, X-Forwarded-Path and the
        # upstream all see the same one, so dot-segments and encodings cannot reach a route they should not.
        split = split_target(self.url, settings.merge_slashes, settings.reject_escaped_slashes)
        if split is None:
            self.keep_alive = False
            return self.fail(400, "bad_request", "invalid request target")
        path, path_b, query, abs_host = split
        if abs_host:  # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host
            host = abs_host
        self.host = host_s = host.decode("latin-1")
        self.path = path
        if trusted and xff:
            self.client_ip = _real_ip(xff, down.client_ip, settings)

        jwks = rt.jwks
        if jwks is not None and path == jwks[0] and (self.method == "GET" or self.method == "HEAD"):
            return self._serve_jwks(jwks[1])
        router = rt.router
        scheme = "https" if down.scheme_b == b"https" else "http"
        cached = router.match_cached  # the LRU-cached matcher, called directly when no route matches on headers
        if cached is not None:
            match = cached(self.method, host_s, path, scheme, None, down.port)
        else:
            match = router.match(self.method, host_s, path, scheme, _header_map(self.headers), down.port)
        if match is None:
            return self.fail(404, "no_route", "no Route matched with those values")
        route = match.route
        self.route = route
        if "http" not in route.protocols and requires_https(route, (xfproto or down.scheme_b).decode("latin-1")):
            # Kong: an https-only route reached over plain http is refused or redirected, never served in clear.
            return _https_required(self, route.https_redirect_status_code, xfhost or host, path_b + query, not xfhost)
        fault = route.fault
        if fault is not None and not self.delayed:  # fault injection (chaos tests): abort or delay
            abort, delay = fault.decide(self.headers)
            if abort:
                self.error = "fault injected"
                return self.fail(abort, "fault_abort", "fault injected")
            if delay > 0:
                # Run start again after the delay (routing is cached; a request body waits in `pending`).
                self.delayed = True
                down.worker.loop.call_later(delay, self._after_delay)
                return
        svc: Service = route.target
        self.service = svc
        if svc.request_timeout > 0:
            self.deadline = down.worker.loop.time() + svc.request_timeout
        self.match = match
        self.host_b = host
        self.path_b = path_b
        self.query = query
        chain = route.plugins
        if chain is not None and chain.buffers_request and self.req_has_body and not self.upgrade:
            # a plugin reads the whole body: it is kept raw (req_buf), then sent with a Content-Length
            self.req_buf = self.pending or []
            self.pending = None
            self.req_chunked = False
            fwd = _drop_named(fwd, _LENGTH_FIELD)
        elif self.req_chunked and self.pending:
            # A pipelined request's body read while it waited its turn was kept as it came, before this head was
            # read: frame it now, as request_body does from here on.
            framed = [b"%x\r\n%b\r\n" % (len(d), d) for d in self.pending]
            if self.req_done:
                framed.append(LAST_CHUNK)
            self.pending = framed

        # Everything of the upstream head after its Host line: the same for every try and target. The head is a
        # %-format of bytes and ints: compiled, that is a single sized concatenation. Every argument is a typed
        # local for that reason; the optional fields are b"" when absent.
        fields: bytes = b"".join(fwd) if fwd else b""
        if trusted and (xff or xfproto or xfport or self.client_ip is not down.client_ip):
            peer: bytes = down.peer_ip_b
            forwarded: bytes = b"X-Real-IP: %b\r\nX-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Port: %b\r\n" % (
                self.client_ip.encode("latin-1"),
                xff + b", " + peer if xff else peer,
                xfproto or down.scheme_b,
                xfport or down.port_b,
            )
        else:
            forwarded = down.forwarded  # the same for every request of this connection: built once
        if trace:
            forwarded = forwarded + trace
        fwd_host: bytes = xfhost or down.forwarded_host(host)
        fwd_path: bytes = xfpath or path_b
        prefix: bytes = b""
        if xfprefix:
            prefix = b"X-Forwarded-Prefix: %b\r\n" % xfprefix
        elif route.strip_path and match.matched_path and not match.captures:
            matched: str = match.matched_path
            prefix = b"X-Forwarded-Prefix: %b\r\n" % matched.encode("latin-1")
        via_line: bytes = b""
        if settings.via:
            via_line = b"Via: %b, 1.1 gwanmun\r\n" % via if via else b"Via: 1.1 gwanmun\r\n"
        rid_name: bytes = settings.request_id_header
        te: bytes = b"Transfer-Encoding: chunked\r\n" if self.req_chunked else b""
        if self.upgrade:
            te = b"Connection: upgrade\r\nUpgrade: %b\r\n" % self.upgrade
        if chain is None:
            self.head_tail = b"%b%bX-Forwarded-Host: %b\r\nX-Forwarded-Path: %b\r\n%b%b%b: %b\r\n%b\r\n" % (
                fields, forwarded, fwd_host, fwd_path, prefix, via_line, rid_name, rid.encode("latin-1"), te,
            )
            return self._proceed()
        # Plugins run first; they may change the forwarded fields, so those are joined after them.
        self.fwd = fwd
        self.fwd_b = fields
        self.conn_named = tokens - _PLAIN_CONNECTION if tokens else None
        self.tail_rest = b"%bX-Forwarded-Host: %b\r\nX-Forwarded-Path: %b\r\n%b%b%b: %b\r\n%b\r\n" % (
            forwarded, fwd_host, fwd_path, prefix, via_line, rid_name, rid.encode("latin-1"), te,
        )
        self._access_begin(chain)

    def _proceed(self) -> None:
        """Routed (and past the plugins' access phase): mirror, admit, forward."""
        route = self.route
        mirror = route.mirror
        if mirror is not None and not self.upgrade and mirror.sample():
            self._mirror_begin(mirror)
        svc: Service = self.service
        if svc.resilience is not None:
            return self._admit(svc)
        self._forward(svc)

    def _forward(self, svc: Service) -> None:
        """Pick a target of ``svc`` and send the request to it: the first try (or the fallback service's)."""
        self.service = svc
        now = 0.0
        if svc.resilience is not None:
            now = self.down.worker.loop.time()
            self.t_try = now
            if not self._breaker_permit(svc, now):
                return
        balancer: Balancer = svc.balancer  # typed: compiled code calls its methods natively
        spec = balancer.hashing
        if spec is None:
            target = balancer.pick(None)
        else:  # consistent-hashing: Kong's hash_on / hash_fallback key (upstream/hashing.py)
            match = self.match
            hk = hash_key(spec, client_ip=self.down.client_ip, headers=self.headers, path=self.path_b,
                          query=self.query[1:],
                          captures={str(k): v for k, v in match.captures.items()} if match.captures else None)
            target = balancer.pick(hk.key)
            if hk.set_cookie is not None:
                self.set_cookie = hk.set_cookie  # a sticky cookie the client did not have yet
        if target is not None and self.tbreakers:
            target = self._target_permit(target, now)
        if target is None:
            return self._no_target()
        self.target = target
        self._started(balancer, target)
        if self.expect_continue and not self.req_done and self.version == "1.1":
            # The request is routed and will be forwarded: now the client may send its body.
            self.expect_continue = False
            self.down.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._dispatch(target, self._head(svc, target))

    def _head(self, svc: Service, target: Target, own: bool = True) -> bytes:
        """The upstream request head for ``svc`` and ``target``: request line and Host, then the common tail."""
        path: str = self.path
        up_path_b: bytes
        if self.up_override is None:
            up_path = upstream_path(svc.path, self.match, path)
            up_path_b = self.path_b if up_path is path else up_path.encode("latin-1")
        else:
            up_path_b = self.up_override
        host: bytes = self.host_b
        host_out: bytes = host if self.route.preserve_host and host else target.host_header
        if self.up_host:
            host_out = self.up_host
        method: str = self.method
        query: bytes = self.query
        tail: bytes = self.head_tail
        head = b"%b %b%b HTTP/1.1\r\nHost: %b\r\n%b" % (method.encode("latin-1"), up_path_b, query, host_out, tail)
        if own:  # else a mirror's head
            self.head_len = len(head)
        return head

    def _dispatch(self, target: Target, head: bytes) -> None:
        """Send ``head`` and the body held in ``pending`` on a pooled connection to ``target``, or open one."""
        down = self.down
        pending = self.pending
        if target.tls is not None:  # https upstream: pools per address, TLS settings and SNI (upstream/pool.py)
            addr = down.worker.resolver.cached(target.host) if target.named else target.host
            pool = down.worker.pools.for_tls(target, addr, self.host if self.route.preserve_host else "") if addr else None
        elif target.named:
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
                if self.pending_size > PENDING_LIMIT:  # a retry's or a late start's held body: read on
                    self.pending_size = 0
                    self.down.resume(self.down.PAUSE_BODY)
        else:
            self.reused = False
            self.pending = [head, *pending] if pending else [head]
            self.pending_size += len(head)
            self.task = asyncio.get_running_loop().create_task(self._connect(target))

    def _after_delay(self) -> None:
        if not self.finished and self.down.transport is not None:
            self.start()
            if self.up_buf:
                self.flush_upstream()

    # ------------------------------------------------------------------------------------------------------------
    # plugins (gwanmun/plugins): access phase, request and response bodies, replies, log
    # ------------------------------------------------------------------------------------------------------------
    def _access_begin(self, chain: Any) -> None:
        fields = self.headers
        if self.spoofed:  # what plugins read: the client's fields, less the identity fields only the gateway sets
            table: dict[bytes, int] = self.rt.settings.request_fields
            fields = [(n, v) for n, v in fields if table.get(n.lower(), F_FORWARD) != F_IDENTITY]
        self.chain = chain
        self.ctx = Ctx(self, self.method, self.path, self.query, None, self.client_ip, self.route, self.service,
                       self.request_id, self.t0, fields)
        self._access_next()

    def _access_next(self) -> None:
        """Run access handlers from ``ai`` on until one answers, one must wait, or all are done."""
        ctx: Ctx = self.ctx
        while True:
            chain: Chain = self.chain
            handlers = chain.access
            i = self.ai
            if i >= len(handlers):
                break
            priority, handler = handlers[i]
            self.ai = i + 1
            had = ctx.consumer
            try:
                result = handler(ctx)
            except Exception:  # noqa: BLE001 - a plugin's bug answers 500, never takes the worker down
                log.exception("request %s: plugin access handler %r failed", self.request_id, handler)
                return self._plugin_failed()
            if result is None:
                if chain.consumer_scoped and ctx.consumer is not None and ctx.consumer is not had:
                    # consumer-scoped plugins: go on with the consumer's chain, after this priority
                    new = chain.for_consumer(ctx.consumer)
                    self.chain = new
                    self.ai = sum(1 for p, _ in new.access if p >= priority)
                continue
            if isinstance(result, Reply):
                return self._reply(result)
            self.task = asyncio.get_running_loop().create_task(self._access_wait(result))
            return
        self._access_complete()

    async def _access_wait(self, awaitable: Any) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("request %s: plugin access handler failed", self.request_id)
            self.task = None
            if not self.finished:
                self._plugin_failed()
                self.flush_downstream()
            return
        self.task = None
        if self.finished:
            return
        if result is not None:
            self._reply(result)
        else:
            self._access_next()
            self.flush_upstream()
        self.flush_downstream()

    def _access_complete(self) -> None:
        """Every access handler said go on: join the (maybe changed) fields, pick the service, forward."""
        ctx: Ctx = self.ctx
        self.access_done = True
        fwd = self.fwd
        changed = False
        if ctx._headers is not None and ctx._headers.changed:  # made only if a plugin looked at the fields
            changed = True
            headers: Headers = ctx._headers
            if headers.edited:  # a received field was removed: forward what is left
                fwd = _forwardable(headers.fields, self.rt.settings.request_fields, self.down.trusted,
                                   self.conn_named, self.req_buf is not None)
            if headers.identity:
                fwd.append(headers.identity)
            fwd += headers.finished()
        if ctx.query is not self.query:
            self.query = ctx.query
        if ctx.upstream_path is not None:
            self.up_override = ctx.upstream_path.encode("latin-1")  # the whole upstream path, as Kong's set_path
        shared = ctx._shared
        if shared:
            method = shared.get("method")
            if method:
                self.method = method
            host = shared.get("upstream_host")
            if host:
                self.up_host = host.encode("latin-1")
            limit = shared.get("max_body")
            if limit is not None:
                self.max_body = limit
                if self.body_seen > limit:
                    return self._body_too_large()
        split = self.route.splits
        if split is not None:
            svc = split.choose(ctx)
            if svc is not None:
                self.service = svc
        self.fwd = fwd
        if self.req_buf is not None:
            if self.req_done:
                self._request_buffered()
            return  # request_done goes on
        self.head_tail = (b"".join(fwd) if changed else self.fwd_b) + self.tail_rest
        self._proceed()

    def _request_buffered(self) -> None:
        """The whole body of a buffered request is here: the plugins read or rewrite it, then it is sent."""
        parts = self.req_buf
        self.req_buf = None
        body = b"".join(parts) if parts else b""
        ctx = self.ctx
        ctx.body = body
        for handler in self.chain.request_body:
            try:
                result = handler(ctx, body)
            except Exception:  # noqa: BLE001
                log.exception("request %s: plugin request_body handler failed", self.request_id)
                return self._plugin_failed()
            if isinstance(result, Reply):
                return self._reply(result)
            if result is not None:
                body = result
                ctx.body = body
        if ctx.query is not self.query:  # a body plugin may move form fields to the query (request-transformer)
            self.query = ctx.query
        self.head_tail = b"".join(self.fwd) + b"Content-Length: %d\r\n" % len(body) + self.tail_rest
        self.pending = [body] if body else None
        self.pending_size = len(body)
        self._proceed()
        self.flush_upstream()

    def _serve_jwks(self, body: bytes) -> None:
        """The passport keys (gateway.passport.jwks_path), for backends to verify passports with."""
        self.status = 200
        self.error = ""
        self._respond(200, [(b"Content-Type", b"application/jwk-set+json"), (b"Cache-Control", b"max-age=300")],
                      body)

    def _body_too_large(self) -> None:
        """The request body passed a plugin's limit: 413 (or a cut connection if the upstream already had some)."""
        self.max_body = -1
        self.req_buf = None
        self.keep_alive = False  # the rest of the body is not read
        self.fail(413, "request_too_large", "Request size limit exceeded")

    def _plugin_failed(self) -> None:
        self.error = "plugin failed"
        self.fail(500, "plugin_error", "An unexpected error occurred")

    def _reply(self, reply: Reply) -> None:
        """A plugin answered: its reply (through the header filters) instead of the upstream's response."""
        if self.finished or self.head_sent:
            return
        self._drop_upstream()
        if self.balanced:
            self._settled()
        if self.permit >= 0 or self.tpermit >= 0:
            self._release_permits()
        body = reply.body
        if not isinstance(body, bytes):
            if reply.error and isinstance(body, dict):
                body = {**body, "request_id": self.request_id}
            body = orjson.dumps(body)
            ctype = b"application/json; charset=utf-8"
        else:
            ctype = b""
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
        if ctype and not any(n.lower() == b"content-type" for n, _ in fields):
            fields.append((b"Content-Type", ctype))
        if reply.error and not self.error:
            self.error = body.decode("utf-8", "replace")[:200] if isinstance(body, bytes) else ""
        if self.req_has_body and not self.req_done:
            self.keep_alive = False
        self._respond(reply.status, fields, body)

    def _respond(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a response the gateway makes (a plugin's reply, an error on a route with plugins), after the
        plugins' header filters; ``fields`` exclude Content-Length, Connection and the request id."""
        ctx = self.ctx
        chain = self.chain
        if ctx is not None and ctx.response_lines and not self.in_reply:  # what the access phase added
            fields = fields + [(n, v) for n, v in _lines(ctx.response_lines)]
        if ctx is not None and chain is not None and chain.header_filter and not self.in_reply:
            self.in_reply = True
            resp = Response(status, Headers(fields), from_gateway=True)
            ctx.response = resp
            for handler in chain.header_filter:
                try:
                    handler(ctx, resp)
                except Exception:  # noqa: BLE001
                    log.exception("request %s: plugin header_filter failed", self.request_id)
            status = resp.status
            fields = resp.headers.fields + resp.headers.added
        settings = self.rt.settings
        if self.down.closing:
            self.keep_alive = False
        connection = b"" if self.keep_alive and self.version == "1.1" else (
            b"Connection: keep-alive\r\n" if self.keep_alive else b"Connection: close\r\n")
        rid_lower: bytes = settings.request_id_lower
        lines = b"".join(b"%b: %b\r\n" % (n, v) for n, v in fields
                         if n.lower() not in _REPLY_MANAGED and n.lower() != rid_lower)
        head = b"%b%bContent-Length: %d\r\n%b: %b\r\n%b\r\n" % (
            status_line(status), lines, len(body), settings.request_id_header, self.request_id.encode("latin-1"),
            connection)
        self.status = status
        self.out.append(head if self.method == "HEAD" or status in (204, 304) else head + body)
        self.bytes_out += len(head) + len(body)
        self.head_sent = True
        self.resp_done = True
        self._finish()

    def _response_filters(self, status: int, lines: list[bytes]) -> tuple[int, list[bytes]]:
        """The upstream's response head through the plugins' header filters; decides whether its body is held
        for ``response_body`` plugins."""
        resp = Response(status, Headers(None, lines))
        ctx: Ctx = self.ctx
        ctx.response = resp
        if ctx.response_lines:
            resp.headers.append_lines(ctx.response_lines)
        for handler in self.chain.header_filter:
            try:
                handler(ctx, resp)
            except Exception:  # noqa: BLE001
                log.exception("request %s: plugin header_filter failed", self.request_id)
        if self.chain.buffers_response and self.method != "HEAD" and resp.status not in (204, 304):
            if any(p.wants_body(ctx, resp) for p in self.chain.response_body):
                self.resp_buf = []
                self.resp_obj = resp
        headers: Headers = resp.headers
        if not headers.parsed and not headers.identity and self.resp_buf is None:
            # nothing read or removed: the received lines as they are, and what plugins added
            tail = headers.finished()
            return resp.status, lines + tail if tail else lines
        out = [b"%b: %b\r\n" % (n, v) for n, v in headers.fields + headers.added
               if self.resp_buf is None or n.lower() != b"content-length"]
        return resp.status, out

    def _response_buffered(self) -> None:
        """The whole body of a held response: the plugins rewrite it, then head and body go out together."""
        body = b"".join(self.resp_buf)
        self.resp_buf = None
        ctx = self.ctx
        resp = self.resp_obj
        for p in self.chain.response_body:
            if p.wants_body(ctx, resp):
                try:
                    body = p.response_body(ctx, resp, body)
                except Exception:  # noqa: BLE001
                    log.exception("request %s: plugin %s response_body failed", self.request_id, p.name)
        head = self.resp_head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body)  # the held head, with our length
        self.resp_head = b""
        self.out.append(head + body)
        self.bytes_out += len(head) + len(body)
        self.head_sent = True

    def _response_overflow(self) -> None:
        """A held response grew past RESPONSE_BUFFER_LIMIT: send it on unchanged (streamed, chunked for HTTP/1.1)."""
        log.warning("request %s: response over %d bytes: sent without the plugins' body changes", self.request_id,
                    RESPONSE_BUFFER_LIMIT)
        parts = self.resp_buf
        self.resp_buf = None
        head = self.resp_head
        self.resp_head = b""
        if self.version == "1.1":
            head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
            self.down_chunked = True
        else:
            self.keep_alive = False
        self.out.append(head)
        self.bytes_out += len(head)
        self.head_sent = True
        for data in parts:
            self.bytes_out += len(data)
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data) if self.down_chunked else data)

    def _run_log_phase(self) -> None:
        ctx = self.ctx
        for handler in self.chain.log:
            try:
                handler(ctx)
            except Exception:  # noqa: BLE001
                log.exception("request %s: plugin log handler failed", self.request_id)

    # ------------------------------------------------------------------------------------------------------------
    # resilience: bulkhead, circuit breakers, retry policy, fallback (docs/resilience.md); mirroring
    # ------------------------------------------------------------------------------------------------------------
    def _admit(self, svc: Service) -> None:
        """A service with resilience settings: take its retry policy, then a bulkhead slot (maybe after a wait)."""
        res = svc.resilience
        policy = res.live_policy
        if policy is not None:
            self.policy = policy
            policy.request_started(self.down.worker.loop.time())
            limit = policy.settings.body_buffer_limit + 65536  # the body, and room for the head
            if limit > self.replay_limit:
                self.replay_limit = limit
        if res.breaker is not None and res.breaker.per_target:
            self.tbreakers = True
        bulkhead = res.live_bulkhead
        if bulkhead is None:
            return self._forward(svc)
        self.bulkhead = bulkhead
        if bulkhead.try_acquire():  # a free slot and no queue: no ticket, no callbacks
            self.slot = True
            return self._forward(svc)
        self.ticket = bulkhead.acquire(self._granted, self._refused)  # may call either at once

    def _granted(self) -> None:
        sync = self.ticket is None  # Bulkhead.acquire calls this before it returns the ticket
        if self.finished:
            return
        self._forward(self.service)
        if not sync:  # granted later, from another request's callback: send what is ready
            self.flush_upstream()
            self.flush_downstream()

    def _refused(self, reason: str) -> None:
        if self.finished:
            return
        if self._fallback(FB_BULKHEAD_FULL):
            return
        if reason == "queue_timeout":
            self.fail(503, reason, "Timed out waiting for the service's concurrency limit")
        else:
            self.fail(503, reason, "The service is at its concurrency limit")

    def _breaker_permit(self, svc: Service, now: float) -> bool:
        """Ask the service's circuit breaker for this try; when it refuses, answer (fallback or 503)."""
        breaker = svc.resilience.live_breaker
        if breaker is None:
            return True
        permit = breaker.acquire(now)
        if permit < 0:
            self._circuit_open(breaker.retry_after(now))
            return False
        self.breaker = breaker
        self.permit = permit
        return True

    def _target_permit(self, target: Target, now: float, answer: bool = True) -> Target | None:
        """With per-target breakers: ``target`` if its circuit lets a call through, else another target's whose
        does; None when every circuit refuses (then, with ``answer``, the request is answered: fallback or 503)."""
        registry = self.down.worker.resilience.breakers
        name: str = self.service.name or ""
        balancer: Balancer = self.service.balancer
        refused: list[Target] = []
        for _ in range(len(balancer.targets)):
            breaker = registry.get(name, target.label)
            if breaker is None:
                return target
            permit = breaker.acquire(now)
            if permit >= 0:
                self.tbreaker = breaker
                self.tpermit = permit
                return target
            refused.append(target)
            nxt = pick_excluding(balancer.pick, refused, len(balancer.targets))
            if nxt is None or nxt in refused:
                break
            target = nxt
        if answer:
            self.error = "circuit open for every target"
            self._circuit_open(1.0)
        return None

    def _target_failed(self) -> None:
        """A connect attempt failed: the target's own breaker counts it (Kong's retries go on to another target)."""
        breaker = self.tbreaker
        if breaker is not None and self.tpermit >= 0:
            now = self.down.worker.loop.time()
            breaker.record(now, False, now - self.t_try, self.tpermit)
            self.tpermit = -1

    def _outcome(self, ok: bool) -> None:
        """Record the current try's outcome with the circuit breakers that permitted it."""
        now = self.down.worker.loop.time()
        duration = now - self.t_try
        breaker = self.breaker
        if breaker is not None and self.permit >= 0:
            breaker.record(now, ok, duration, self.permit)
            self.permit = -1
        breaker = self.tbreaker
        if breaker is not None and self.tpermit >= 0:
            breaker.record(now, ok, duration, self.tpermit)
            self.tpermit = -1

    def _release_permits(self) -> None:
        """The request ended with no outcome for its try (the client went away): give the permits back."""
        now = self.down.worker.loop.time()
        if self.breaker is not None and self.permit >= 0:
            self.breaker.release(now, self.permit)
            self.permit = -1
        if self.tbreaker is not None and self.tpermit >= 0:
            self.tbreaker.release(now, self.tpermit)
            self.tpermit = -1

    def _circuit_open(self, retry_after: float) -> None:
        if self._fallback(FB_CIRCUIT_OPEN):
            return
        self.error = self.error or "circuit open"
        self.fail(503, "circuit_open", "The upstream service is unavailable (circuit open)",
                  extra=b"Retry-After: %d\r\n" % retry_after_header(retry_after))

    def _no_target(self) -> None:
        if self._fallback(FB_NO_HEALTHY_TARGET):
            return
        self.fail(503, "no_peer", "failure to get a peer from the ring-balancer")

    def _try_failed(self, status: int, code: str, message: str, detail: str, timed_out: bool) -> None:
        """A try failed before any of its response was relayed (connect failure, reset, invalid response, timeout):
        the breakers count it, then the retry policy, the fallback, or a 502/504."""
        if self.breaker is not None or self.tbreaker is not None:
            self._outcome(False)
        if not self.head_sent and not self.finished:
            if self.policy is not None and self._retry(status, timed_out, detail):
                return
            if self._fallback(FB_RETRIES_EXHAUSTED):
                if detail:
                    upstream_failed(self, status, message, detail, True)
                return
        self._upstream_failed(status, code, message, detail=detail)

    def _body_held(self) -> list[bytes] | None:
        """The request body forwarded so far (still growing if the client is sending), without the head; None if
        it was not all kept. Takes it: the caller sends it again."""
        if self.conn is not None or self.replay is not None:
            replay = self.replay
            if replay is None:
                return None
            body = replay[1:] if self.head_len else replay
        else:
            pending = self.pending or []
            body = pending[1:] if self.head_len and pending else pending
        return body

    def _take_back(self) -> list[bytes] | None:
        """Stop the current try and take back the request's body, to send it again (a retry or a fallback
        service). Returns None, changing nothing, if the body was not all kept."""
        body = self._body_held()
        if body is None:
            return None
        if self.balanced:
            self._settled()
        self._drop_upstream()
        self.down.resume(self.down.PAUSE_UPSTREAM)  # the dropped connection may have stopped taking the body
        self.pending = body
        size = 0
        for chunk in body:
            size += len(chunk)
        self.pending_size = size
        self.replay = None
        self.replay_size = 0
        self.up_buf = None
        self.head_len = 0
        self.status = 0
        self.parser = None
        self.resp_mode = _NONE
        self.resp_upgrade = b""
        self._reset_response_fields()
        return body

    def _retry(self, status: int, timed_out: bool, why: str) -> bool:
        """The retry policy's turn after a failed try: schedule another try on another target, or say no."""
        policy = self.policy
        body = self._body_held()
        replayable = body is not None and (
            sum(len(c) for c in body) <= policy.settings.body_buffer_limit
        )
        loop = self.down.worker.loop
        now = loop.time()
        if policy.decide(now, self.method, self.tries, status, timed_out, replayable) != RETRY:
            return False
        delay = policy.backoff(self.tries + 1)
        if self.deadline and now + delay >= self.deadline:
            return False
        target = self.target
        if self._take_back() is None:
            return False
        self.tries += 1
        if self.tried is None:
            self.tried = [target]
        else:
            self.tried.append(target)
        log.info("request %s: retry %d in %.0f ms (%s)", self.request_id, self.tries, delay * 1000,
                 why or f"status {status}")
        self.retry_timer = loop.call_later(delay, self._retry_go)
        return True

    def _retry_go(self) -> None:
        self.retry_timer = None
        if self.finished or self.down.transport is None:
            return
        svc: Service = self.service
        now = self.down.worker.loop.time()
        if self.deadline and now >= self.deadline:
            return self._deadline_passed()
        self.t_try = now
        if not self._breaker_permit(svc, now):
            return
        balancer: Balancer = svc.balancer
        target = pick_excluding(balancer.pick, self.tried or (), len(balancer.targets))
        if target is not None and self.tbreakers:
            target = self._target_permit(target, now)
            if target is None:
                return
        if target is None:
            return self._no_target()
        self.target = target
        self._started(balancer, target)
        self._dispatch(target, self._head(svc, target))
        self.flush_upstream()

    def _fallback(self, trigger: str) -> bool:
        """Answer with the service's fallback for ``trigger``, if it has one: a static response, or the request sent
        to the fallback service (once, with that service's circuit breaker, not its retries or bulkhead)."""
        svc: Service = self.service
        res = svc.resilience
        if res is None or self.fell_back or self.finished:
            return False
        fb = res.fallback
        if fb is None or not fb.applies(trigger):
            return False
        other: Service | None = svc.fallback_to
        if other is not None:
            if self._take_back() is None:
                return False
            self.fell_back = True
            self.error = trigger
            self._release_permits()
            self.breaker = self.tbreaker = self.policy = None
            self.tbreakers = False
            log.info("request %s: %s; falling back to service %s", self.request_id, trigger, other.label)
            self._forward(other)
            self.flush_upstream()
            return True
        self.fell_back = True
        self.error = trigger
        self._drop_upstream()
        if self.balanced:
            self._settled()
        if not self.request_id:
            self.request_id = self.down.worker.next_request_id()
        if self.down.closing or (self.req_has_body and not self.req_done):
            self.keep_alive = False
        settings = self.rt.settings
        extra = b"%b: %b\r\n" % (settings.request_id_header, self.request_id.encode("latin-1"))
        if settings.via:
            extra += b"Via: 1.1 gwanmun\r\n"
        if not self.keep_alive:
            extra += b"Connection: close\r\n"
        elif self.version == "1.0":
            extra += b"Connection: keep-alive\r\n"
        head = fb.head(extra)
        self.status = fb.status
        self.out.append(head if self.method == "HEAD" else head + fb.body)
        self.bytes_out += len(head) + len(fb.body)
        self.head_sent = True
        self.resp_done = True
        self._finish()
        self.flush_downstream()
        return True

    def _mirror_begin(self, mirror: Any) -> None:
        self.mirror = mirror
        buf: list[bytes] = []
        size = 0
        for chunk in self.pending or ():
            buf.append(chunk)
            size += len(chunk)
        self.mirror_buf = buf
        self.mirror_size = size
        if size > mirror.body_limit:
            self.mirror_buf = None
        elif self.req_done:
            self._mirror_send()

    def _mirror_add(self, data: bytes) -> None:
        self.mirror_size += len(data)
        if self.mirror_size > self.mirror.body_limit:
            self.mirror_buf = None  # too big to hold: this request is not mirrored
        else:
            self.mirror_buf.append(data)

    def _mirror_send(self) -> None:
        buf = self.mirror_buf
        self.mirror_buf = None
        svc: Service = self.mirror.service
        self.down.worker.shadows.send(self.down.worker, svc, lambda target: self._head(svc, target, False), buf)

    def request_body(self, data: bytes) -> None:
        if self.resp_done or self.finished:
            return  # answered already (e.g. 404); the rest of the body is read and dropped
        self.bytes_in += len(data)
        if self.max_body >= 0 or self.chain is not None:
            self.body_seen += len(data)
            if 0 <= self.max_body < self.body_seen:
                return self._body_too_large()
        if self.req_buf is not None:
            self.req_buf.append(data)
            self.req_buf_size += len(data)
            if self.req_buf_size > REQUEST_BUFFER_LIMIT:
                self.req_buf = None
                self.keep_alive = False
                self.fail(413, "request_too_large", "Request size limit exceeded")
            return
        if self.req_chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if self.mirror_buf is not None:
            self._mirror_add(data)
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
        if self.req_buf is not None:
            if self.access_done and not self.finished:
                self._request_buffered()
            return
        if self.mirror_buf is not None:
            if self.req_chunked:
                self._mirror_add(LAST_CHUNK)
            self._mirror_send()
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
            if self.replay_size <= self.replay_limit:
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
        self.parser = conn.response_parser()
        self._reset_response_fields()
        self.last_io = now = conn.loop.time()
        self.t_up = perf_counter()
        due = now + self.service.read_timeout
        if self.deadline and self.deadline < due:
            due = self.deadline
        if conn.timer is None or conn.timer_due > due:
            conn.watch(due)

    def _reset_response_fields(self) -> None:
        """Ready for a (next) response head: a 1xx is followed by the final one."""
        settings = self.rt.settings
        self.resp_table = settings.response_fields
        self.resp_lines = []
        self.resp_length = self.resp_chunked = False
        self.resp_tokens = None
        self.resp_budget = settings.max_header_size
        self.resp_room = settings.max_headers

    async def _connect(self, target: Target) -> None:
        """Open a connection (cold path), retrying other targets on failure as Kong's ``retries`` says."""
        svc = self.service
        worker = self.down.worker
        tries = svc.retries + 1
        timed_out = False
        reason = ""
        for attempt in range(tries):
            if attempt:
                balancer: Balancer = svc.balancer
                nxt = balancer.pick(None)
                if nxt is not None and self.tbreakers:
                    nxt = self._target_permit(nxt, worker.loop.time(), False)
                if nxt is not None and nxt is not target:
                    target = nxt
                    if self.pending and self.head_len:  # the head names the target's Host
                        self.pending[0] = self._head(svc, target)
                self.target = target
                self._started(balancer, target)
            try:
                if target.tls is not None:  # https upstream: pools per address, TLS settings and SNI
                    addr = await worker.resolver.resolve(target.host) if target.named else target.host
                    pool = worker.pools.for_tls(target, addr, self.host if self.route.preserve_host else "")
                elif target.named:
                    addr = await worker.resolver.resolve(target.host)
                    pool = worker.pools.get(addr, target.port)
                else:
                    pool = target.pool or worker.pools.for_target(target)
                    addr = target.host
                timeout = svc.connect_timeout
                if self.deadline:
                    left = self.deadline - worker.loop.time()
                    if left <= 0:
                        self.task = None
                        return self._deadline_passed()
                    timeout = min(timeout, left)
                conn = await pool.connect(addr, target.port, timeout)
            except ResolveError as exc:
                if self.finished:
                    return
                self.task = None
                return self.fail(503, "dns", "name resolution failed", detail=str(exc))
            except TimeoutError:
                self._settled()
                self._target_failed()
                timed_out = True
                reason = f"connect to {target.label} timed out"
                if target.watched:  # passive health checks (outlier detection) count this target
                    worker.health.report(target, None, "timeout")
                continue
            except OSError as exc:
                self._settled()
                self._target_failed()
                if target.watched:
                    worker.health.report(target, None, "tcp")
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
                self._try_failed(504, "upstream_timeout", "The upstream server is timing out", reason, True)
            else:
                self._try_failed(502, "upstream_error", "An invalid response was received from the upstream server",
                                 reason, False)
            self.flush_downstream()

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
        self._reset_response_fields()
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
        if self.tunneling:
            self.bytes_out += len(data)
            self.out.append(data)
            self.flush_downstream()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not self.tunneling:
                self._upstream_failed(502, "upstream_error", "upstream switched protocols unasked")
            else:  # the 101 head is out; what followed it in this read is the new protocol's
                rest = data[exc.args[0]:] if exc.args and isinstance(exc.args[0], int) else b""
                if rest:
                    self.bytes_out += len(rest)
                    self.out.append(rest)
                self.flush_downstream()
                self.down.start_tunnel(self)
                return
        except httptools.HttpParserError as exc:
            if not self.status and self.target.watched:
                self.down.worker.health.report(self.target, None, "tcp")
            cause = exc.__context__ if isinstance(exc.__context__, _ResponseHeadTooLarge) else exc
            self._try_failed(502, "upstream_error", "An invalid response was received from the upstream server",
                             f"invalid response from {self.target.label}: {cause}", False)
        self.flush_downstream()

    def upstream_eof(self) -> None:
        if self.tunneling:
            return self.end_tunnel()
        if self.resp_mode == _UNTIL_CLOSE and self.status:
            self.on_message_complete()
            self.flush_downstream()
        else:
            self._upstream_closed("upstream closed the connection")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.tunneling:
            return self.end_tunnel()
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
        if not self.status and self.target.watched:
            self.down.worker.health.report(self.target, None, "tcp")
        self._try_failed(502, "upstream_error", "An invalid response was received from the upstream server",
                         f"{self.target.label}: {why}", False)

    # protocol switch (WebSocket) ----------------------------------------------------------------------------------
    def _switch_protocols(self, fields: bytes) -> None:
        """The upstream answered 101 to an upgrade request: relay it; the tunnel starts once the head is out."""
        self.status = 101
        self.tunneling = True
        self.keep_alive = False  # the client connection ends with the tunnel
        self.resp_done = False
        settings = self.rt.settings
        via: bytes = b"Via: 1.1 gwanmun\r\n" if settings.via else b""
        rid_name: bytes = settings.request_id_header
        upgrade: bytes = self.resp_upgrade or self.upgrade
        head = b"HTTP/1.1 101 Switching Protocols\r\n%bConnection: upgrade\r\nUpgrade: %b\r\n%b%b: %b\r\n\r\n" % (
            fields, upgrade, via, rid_name, self.request_id.encode("latin-1")
        )
        self.bytes_out += len(head)
        self.out.append(head)
        self.head_sent = True
        conn = self.conn
        if conn is not None:
            conn.parser = None  # llhttp is done with this connection: it now carries the new protocol

    def tunnel_up(self, data: bytes) -> None:
        """Client bytes of the switched protocol, straight to the upstream."""
        conn = self.conn
        if conn is None or conn.transport is None:
            return
        self.bytes_in += len(data)
        self.last_io = conn.loop.time()
        conn.transport.write(data)

    def end_tunnel(self) -> None:
        """Either side closed: close the other once what it was sent is flushed, and log the exchange."""
        if self.finished:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.exchange = None
            conn.closed = True  # never pooled again
            conn.pool.active -= 1
            conn.pool.discard(conn)
            if conn.transport is not None:
                conn.transport.close()  # a FIN after the pending bytes, not a reset
        self.t_up_end = perf_counter()
        self.resp_done = self.req_done = True
        self.keep_alive = False
        self._finish()

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
        """Classify each response field as it arrives; forwarded ones are kept as finished lines."""
        self.resp_budget -= len(name) + len(value) + 4
        self.resp_room -= 1
        if self.resp_budget < 0 or self.resp_room < 0:
            settings = self.rt.settings
            raise _ResponseHeadTooLarge(
                f"response head over the limit of {settings.max_header_size} bytes or {settings.max_headers} fields"
            )
        table: dict[bytes, int] = self.resp_table
        action = table.get(name)
        if action is None:
            action = table.get(name.lower(), F_FORWARD)
        if action == F_FORWARD:
            self.resp_lines.append(b"%b: %b\r\n" % (name, value))
        elif action == F_CL:
            self.resp_length = True
            self.resp_lines.append(b"%b: %b\r\n" % (name, value))
        elif action == F_TE:
            self.resp_chunked = True
        elif action == F_UPGRADE:
            self.resp_upgrade = value
        elif action == F_CONNECTION:
            if value != b"keep-alive" and value != b"close" and value.lower() not in _PLAIN_CONNECTION:
                tokens = connection_tokens(value)
                self.resp_tokens = tokens if self.resp_tokens is None else self.resp_tokens | tokens
        # else: another hop-by-hop field (F_DROP), or the upstream's request id: ours is the one that counts

    def on_headers_complete(self) -> None:
        status: int = self.parser.get_status_code()
        lines: list[bytes] = self.resp_lines
        tokens = self.resp_tokens
        if tokens:
            extra = tokens - _PLAIN_CONNECTION
            if extra:  # RFC 9110 §7.6.1: drop every field the Connection header names
                lines = [line for line in lines if line.split(b":", 1)[0].lower() not in extra]
        fields: bytes = b"".join(lines)
        if status < 200:
            if status == 101 and self.upgrade and self.resp_upgrade and tokens and b"upgrade" in tokens:
                return self._switch_protocols(fields)
            self._reset_response_fields()
            if status == 101:
                raise httptools.HttpParserUpgrade("101 without an upgrade request")
            if self.version == "1.1":  # relay 1xx (100 Continue, 103 Early Hints) to HTTP/1.1 clients
                self.out.append(b"%b%b\r\n" % (status_line(status), fields))
            return
        self.status = status
        if self.balanced:
            self._settled()
        if self.target.watched:  # passive health checks count this target's answers
            self.down.worker.health.report(self.target, status, "http")
        if self.breaker is not None or self.tbreaker is not None:
            breaker = self.breaker if self.breaker is not None else self.tbreaker
            self._outcome(not breaker.settings.is_failure(status))
        policy = self.policy
        if policy is not None and status in policy.settings.statuses and not self.upgrade:
            if self._retry(status, False, ""):
                return
            if self._fallback(FB_RETRIES_EXHAUSTED):
                return
        added: bytes = b""
        if self.chain is not None:
            chain: Chain = self.chain
            if chain.header_filter or chain.buffers_response:
                status, lines = self._response_filters(status, lines)
                self.status = status
                fields = b"".join(lines)
            else:
                ctx: Ctx = self.ctx
                added = ctx.response_lines  # fields the access phase added (plugins.context.Ctx.add_response_lines)

        if self.method == "HEAD" or status == 204 or status == 304:
            mode = _NONE
        elif self.resp_chunked:
            mode = _CHUNKED
        elif self.resp_length:
            mode = _LENGTH
        else:
            mode = _UNTIL_CLOSE
        self.resp_mode = mode
        te: bytes = b""
        if mode == _CHUNKED or mode == _UNTIL_CLOSE:
            if self.version == "1.1":
                self.down_chunked = True
                te = b"Transfer-Encoding: chunked\r\n"
            else:
                self.keep_alive = False  # an HTTP/1.0 client reads to the close
        if self.resp_buf is not None:  # held whole for the plugins: sent with a Content-Length
            self.down_chunked = False
            te = b""
        if self.expect_continue and not self.req_done:
            self.keep_alive = False  # the client may never send the body it announced
        settings = self.rt.settings
        via: bytes = b"Via: 1.1 gwanmun\r\n" if settings.via else b""
        if self.set_cookie:
            via = b"%bSet-Cookie: %b\r\n" % (via, self.set_cookie)
        rid_name: bytes = settings.request_id_header
        if not self.keep_alive or self.down.closing:
            self.keep_alive = False
            connection = b"Connection: close\r\n"
        elif self.version == "1.0":
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        line: bytes = STATUS_LINE.get(status) or status_line(status)
        head = b"%b%b%b%b%b%b: %b\r\n%b\r\n" % (
            line, fields, added, te, via, rid_name, self.request_id.encode("latin-1"), connection
        )
        if self.resp_buf is not None:
            self.resp_head = head  # held until the body is complete (_response_buffered)
            return
        self.bytes_out += len(head)
        self.out.append(head)
        self.head_sent = True
        if mode == _NONE and self.method == "HEAD":
            # llhttp cannot be told a response answers HEAD, so it would wait for the announced body: end here, and
            # give the connection a fresh parser for its next response.
            conn = self.conn
            if conn is not None:
                conn.parser = None
            self.on_message_complete()

    def on_body(self, data: bytes) -> None:
        if self.resp_done:
            return
        buf = self.resp_buf
        if buf is not None:
            buf.append(data)
            self.resp_buf_size += len(data)
            if self.resp_buf_size > RESPONSE_BUFFER_LIMIT:
                self._response_overflow()
            return
        self.bytes_out += len(data)
        if self.down_chunked:
            self.out.append(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.out.append(data)

    def on_message_complete(self) -> None:
        if not self.status or self.resp_done or self.tunneling:
            return  # end of a 1xx interim response, or a HEAD response already ended
        if self.resp_buf is not None:
            self._response_buffered()
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
        if self.tunneling:  # the tunnel's idle timeout: read_timeout without a byte either way (nginx's rule)
            if self.up_read_paused or conn.paused or self.down.paused or self.down.write_paused:
                self.last_io = now  # bytes are waiting on a slow side: busy, not idle
            if now >= self.last_io + svc.read_timeout:
                self.error = f"tunnel idle for {svc.read_timeout:g}s"
                return self.end_tunnel()
            conn.watch(self.last_io + svc.read_timeout)
            return
        deadline = self.deadline
        if deadline and now >= deadline:
            return self._deadline_passed()
        limit = svc.write_timeout if conn.paused else svc.read_timeout
        if self.up_read_paused:  # we paused the upstream for a slow client: not the upstream's fault
            self.last_io = now
        due = self.last_io + limit
        if now < due:
            conn.watch(due if not deadline or due < deadline else deadline)
            return
        if not self.status and self.target.watched:
            self.down.worker.health.report(self.target, None, "timeout")
        self._try_failed(504, "upstream_timeout", "The upstream server is timing out",
                         f"{self.target.label}: no data for {limit:g}s", True)
        self.flush_downstream()

    def _started(self, balancer: Balancer, target: Target) -> None:
        """A try begins on ``target``: least-connections and latency balancers count it (the others skip this)."""
        if balancer.tracks:
            balancer.started(target)
            self.balanced = True
            self.t_pick = perf_counter()

    def _settled(self) -> None:
        """The try ended (response head, failure or abandon): exactly one ``finished`` per ``started``."""
        if self.balanced:
            self.balanced = False
            balancer: Balancer = self.service.balancer
            balancer.finished(self.target, perf_counter() - self.t_pick)

    def _deadline_passed(self) -> None:
        """The request's overall deadline (request_timeout) passed: 504, or a cut response if it had begun."""
        self._upstream_failed(504, "request_timeout", "The request timed out",
                              detail=f"request_timeout of {self.service.request_timeout:g}s passed")
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

    def fail(self, status: int, code: str, message: str, detail: str = "", extra: bytes = b"") -> None:
        """Answer with a JSON error, or, if the response has begun, cut the client connection. ``extra``: more
        field lines for the error's head."""
        if self.finished:
            return
        if self.balanced:
            self._settled()
        if self.permit >= 0 or self.tpermit >= 0:  # a try was under way: the gateway's 5xx is its failure
            if status >= 500:
                self._outcome(False)
            else:
                self._release_permits()
        self.error = detail or message
        if detail:  # the error log's reason for the failure (observability/errorlog.py)
            upstream_failed(self, status, message, detail)
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
        if self.ctx is not None and not self.in_reply:  # the plugins' header filters see gateway errors too
            fields = [(b"Content-Type", b"application/json; charset=utf-8")]
            for line in extra.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b": ")
                    fields.append((name, value))
            self.resp_buf = None
            return self._respond(status, fields, body)
        if not self.keep_alive:
            connection = b"Connection: close\r\n"
        elif self.version == "1.0":
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        head = error_head(status, len(body), self.request_id, connection + extra)
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
        self.parser = None  # it belongs to the upstream connection, which may already serve another exchange
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.permit >= 0 or self.tpermit >= 0:
            self._release_permits()
        if self.slot:
            self.slot = False
            self.bulkhead.release()
        elif self.ticket is not None:
            self.bulkhead.cancel(self.ticket)  # withdraws a queued request, or frees its slot
        self.flush_downstream()
        worker = self.down.worker
        if not self.t_up_end and self.t_up:
            self.t_up_end = perf_counter()
        if self.chain is not None:
            chain: Chain = self.chain
            if chain.log:
                self._run_log_phase()
        worker.access_log.write(self)
        recorder: Recorder = self.recorder if self.recorder is not None else worker.recorder
        recorder.record(self)  # metrics, top talkers, the trace span (observability/recorder.py)
        self.down.exchange_done(self)
        if self.ctx is not None:
            ctx: Ctx = self.ctx
            # Exchange.ctx and Ctx.ex are a reference cycle: broken here, the pair is freed at once rather than by
            # the cyclic GC (measured: collections cost ~1.5 us per request on a route with one no-op plugin)
            ctx.ex = None

    def abort(self) -> None:
        """The client connection is gone: drop the upstream side, log what we know."""
        if self.finished:
            return
        if self.balanced:
            self._settled()
        if self.tunneling:
            return self.end_tunnel()
        self._drop_upstream()
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
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
_REPLY_MANAGED: Final = frozenset({b"content-length", b"connection", b"transfer-encoding", b"keep-alive",
                                    b"x-request-id"})


def _forwardable(fields: list[tuple[bytes, bytes]], table: dict[bytes, int], trusted: bool, named: Any,
                 drop_length: bool) -> list[bytes]:
    """The flat field list to forward, rebuilt from a plugin-changed request: what ``start`` forwards of each field
    class (ordinary fields and Content-Length, and Forwarded from trusted peers), less the Connection-named ones."""
    out: list[bytes] = []
    for name, value in fields:
        action = table.get(name)
        if action is None:
            action = table.get(name.lower(), F_FORWARD)
        if action == F_FORWARD or (action == F_CL and not drop_length) or (action == F_FORWARDED and trusted):
            if named is None or name.lower() not in named:
                out += (name, b": ", value, b"\r\n")
    return out


def _drop_named(parts: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove the fields named in ``names`` from a flat [name, ': ', value, CRLF, ...] list."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
    return out


def _header_map(headers: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    m: dict[str, list[str]] = {}
    for name, value in headers:
        m.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return m


def strip_port(host: bytes) -> bytes:
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    i = host.rfind(b":")
    return host[:i] if i >= 0 else host


def _https_required(ex: Exchange, code: int, host: bytes, uri: bytes, strip: bool) -> None:
    """Kong's answer to an https-only route reached over plain http (``kong/runloop/handler.lua``): 426 with
    ``Upgrade: TLS/1.2, HTTP/1.1``, or with ``https_redirect_status_code`` 301/302/307/308 an empty redirect to
    ``https://<host><request uri>``. ``host`` is a trusted client's X-Forwarded-Host as sent, else the Host, whose
    port is dropped and case lowered (``strip``: nginx's ``$host``). Without a host there is nowhere to redirect:
    426."""
    if strip:
        host = strip_port(host).lower()
    if not ex.request_id:
        ex.request_id = ex.down.worker.next_request_id()
    if not host:
        code = 426
    ex.status = code
    ex.error = "https required"
    if ex.down.closing or (ex.req_has_body and not ex.req_done):
        ex.keep_alive = False
    close = b", close" if not ex.keep_alive else b", keep-alive" if ex.version == "1.0" else b""
    if code == 426:
        body = orjson.dumps({"message": "Please use HTTPS protocol", "request_id": ex.request_id})
        fields = b"Content-Type: application/json; charset=utf-8\r\nUpgrade: TLS/1.2, HTTP/1.1\r\nConnection: Upgrade"
        fields += close
    else:
        body = b""
        fields = b"Location: https://" + host + uri + (b"\r\nConnection: " + close[2:] if close else b"")
    head = b"".join((
        status_line(code), fields, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n",
        ex.rt.settings.request_id_header, b": ", ex.request_id.encode("latin-1"), b"\r\n\r\n",
    ))
    ex.out.append(head if ex.method == "HEAD" else head + body)
    ex.bytes_out += len(head) + len(body)
    ex.head_sent = True
    ex.resp_done = True
    ex._finish()


def _real_ip(xff: bytes, peer: str, settings) -> str:
    """The client address behind trusted proxies: the right-most X-Forwarded-For entry that is not trusted."""
    hops = [h.strip().decode("latin-1") for h in xff.split(b",") if h.strip()]
    for hop in reversed(hops):
        if not settings.is_trusted(hop):
            return hop
    return hops[0] if hops else peer
