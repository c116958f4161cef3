"""Listeners and the worker: the state one process shares among its connections, reloads and graceful shutdown.

A ``Worker`` is everything one process shares among its connections: the runtime holder, the upstream pools, the
DNS cache, the access log and the request-id generator. Pools outlive config reloads (``Worker.apply``).

The processes themselves (a supervisor and its worker processes, signals, reload triggers) are in
``gwanmun.process``; this module knows nothing about them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time

import orjson

from .http.downstream import DownstreamProtocol
from .proxy import RequestIds
from .observability.accesslog import AccessLog, access_log_settings
from .observability.publish import WorkerObservability
from .observability.recorder import Recorder
from .observability.tracing import Tracing
from .runtime import Runtime, RuntimeHolder
from .tls import listener_context
from .upstream.dns import Resolver
from .resilience.breaker import OPEN, transition_fields
from .resilience.registry import ServiceResilience, WorkerResilience
from .upstream.health import HealthTable
from .upstream.mirror import Shadows
from .upstream.pool import Pools, PoolSettings

log = logging.getLogger("gwanmun")


class JsonFormatter(logging.Formatter):
    """Structured logs: one JSON object per line, on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def event(name: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, name, extra={"fields": {"event": name, **fields}})


class Worker:
    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop, health_status: str | None = None,
                 index: int = 0) -> None:
        self.loop = loop
        self.holder = RuntimeHolder(runtime)
        gw = runtime.gateway
        self.pools = Pools(pool_settings(gw))
        self.resolver = make_resolver(gw)
        self.access_log = AccessLog(gw.access_log, loop, gw)
        self.connections: set[DownstreamProtocol] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.next_request_id = RequestIds().next
        self.forced = False  # force_close(): shutdown stops waiting for in-flight requests
        # upstream target health (active probes, passive reports), kept across reloads; its status file, if any,
        # is what `gwanmun health` reads
        self.health = HealthTable(health_status, index)
        self.health.apply(runtime.health, runtime.services)
        # circuit breakers, retry budgets and bulkheads by service name, kept across reloads (docs/resilience.md)
        self.resilience = WorkerResilience(loop, on_breaker_transition)
        self.resilience.reconcile(resilience_of(runtime))
        self.shadows = Shadows()  # mirrored requests (upstream/mirror.py)
        # observability (docs/observability.md): the proxy records each request in ``recorder`` and, while
        # gateway.tracing is set, asks ``tracing`` for its traceparent; ``observability`` publishes the counters to
        # the supervisor and (re)builds ``tracing`` from the config
        self.recorder = Recorder()
        self.tracing: Tracing | None = None
        self.observability = WorkerObservability(self, index)

    async def start(self, socks: list[socket.socket] | None = None) -> list[str]:
        """Serve every ``gateway.listen`` address, on ``socks`` when given (bound by the supervisor, in the order of
        ``gateway.listen``), else on sockets bound here. Returns the addresses as ``host:port``."""
        self.pools.start(self.loop)
        self.health.start(self.loop)
        self.observability.start()
        addresses = []
        for i, listen in enumerate(self.holder.current.gateway.listen):
            sock = socks[i] if socks is not None else bind(*split_listen(listen))
            port = sock.getsockname()[1]  # the port actually bound (listen on port 0 in tests)
            tls = listener_context(listen, lambda: self.holder.current.tls)  # "ssl" flag: HTTPS (gwanmun/tls.py)
            server = await self.loop.create_server(
                lambda port=port, scheme="https" if tls else "http": DownstreamProtocol(self, port, scheme),
                sock=sock, backlog=4096, ssl=tls,
            )
            self.servers.append(server)
            addresses.append(address_of(sock))
        return addresses

    def apply(self, runtime: Runtime) -> Runtime:
        """Serve new requests from ``runtime`` (a reload); requests in flight finish on the one they started with.

        The worker's own settings follow the new ``gateway`` block: the access log is reopened if its destination
        changed, pools take the new keep-alive settings in place (warm connections are kept), and the DNS resolver is
        rebuilt if a ``dns_*`` setting changed (its cache starts empty). Settings read once per connection (head
        limits, ``trusted_ips``, keep-alive on/off) apply to new connections. Returns the replaced runtime.
        Raises ``OSError`` (and changes nothing) if the new access log cannot be opened.
        """
        old_gw, gw = self.holder.current.gateway, runtime.gateway
        access_log = (AccessLog(gw.access_log, self.loop, gw)
                      if access_log_settings(gw) != access_log_settings(old_gw) else None)
        carry_plugins(self.holder.current, runtime)
        old = self.holder.swap(runtime)
        self.health.apply(runtime.health, runtime.services)  # the state of targets that still exist is kept
        reset = self.resilience.reconcile(resilience_of(runtime))
        if reset:
            event("circuit_breakers_reset", breakers=["/".join(k).rstrip("/") for k in reset])
        if access_log is not None:
            self.access_log.close()
            self.access_log = access_log
        if pool_settings(gw) != pool_settings(old_gw):
            self.pools.configure(pool_settings(gw))
        if dns_settings(gw) != dns_settings(old_gw):
            self.resolver = make_resolver(gw)
        self.observability.configure(gw)  # tracing on, off or rebuilt if gateway.tracing changed
        return old

    def in_use(self, runtime: Runtime) -> bool:
        """Whether a request in flight or waiting on a connection still uses ``runtime``."""
        for conn in self.connections:
            ex = conn.current
            if ex is not None and ex.rt is runtime:
                return True
            for ex in conn.queue:
                if ex.rt is runtime:
                    return True
        return False

    def stop_accepting(self) -> None:
        """Close the listeners and every idle connection; connections with a request in flight close after it."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.closing = True
            if conn.current is None and not conn.queue:
                conn.close()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds, or until ``force_close``), then
        close everything."""
        self.stop_accepting()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline and not self.forced:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        await close_plugins(self.holder.current)
        self.pools.close()
        self.shadows.close()
        self.health.close()
        await self.observability.aclose()
        self.access_log.close()

    def force_close(self) -> None:
        """End a graceful shutdown now: connections still open are aborted."""
        self.forced = True


def _plugin_key(scoped) -> tuple:
    def ref(entity) -> str | None:
        if entity is None:
            return None
        return getattr(entity, "name", None) or getattr(entity, "id", None) or getattr(entity, "username", None)

    p = scoped.plugin
    return (p.name, orjson.dumps(p.config.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS),
            ref(scoped.service), ref(scoped.route), ref(scoped.consumer))


def carry_plugins(old: Runtime, new: Runtime) -> None:
    """A plugin whose name, config and scope are unchanged takes its predecessor's state (``carry_over``), so a
    reload does not reset its counters or caches."""
    if not old.plugins or not new.plugins:
        return
    previous = {_plugin_key(s): s.plugin for s in old.plugins}
    for s in new.plugins:
        before = previous.get(_plugin_key(s))
        if before is not None:
            try:
                s.plugin.carry_over(before)
            except Exception:  # noqa: BLE001 - a plugin's bug must not fail a reload
                log.exception("plugin %s: carry_over failed", s.plugin.name)


async def close_plugins(runtime: Runtime) -> None:
    """A retired runtime's plugins stop their background work (``aclose``)."""
    for s in runtime.plugins:
        try:
            await s.plugin.aclose()
        except Exception:  # noqa: BLE001
            log.exception("plugin %s: aclose failed", s.plugin.name)


def resilience_of(runtime: Runtime) -> dict[str, ServiceResilience]:
    return {s.name: s.resilience for s in runtime.services if s.resilience is not None and s.name}


def on_breaker_transition(breaker, old: int, new: int, why: int, now: float) -> None:
    """Every circuit-breaker transition is a log event; opening is a warning."""
    event("circuit_breaker", logging.WARNING if new == OPEN else logging.INFO,
          **transition_fields(breaker, old, new, why, now))


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket with SO_REUSEPORT, so workers (and a restarted process) can share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host in ("::", "") else 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def make_resolver(gw) -> Resolver:
    return Resolver(**dns_settings(gw))


def dns_settings(gw) -> dict:
    return {
        "hostsfile": gw.dns_hostsfile,
        "nameservers": list(gw.dns_resolver),
        "stale_ttl": gw.dns_stale_ttl,
        "not_found_ttl": gw.dns_not_found_ttl,
        "error_ttl": gw.dns_error_ttl,
        "valid_ttl": gw.dns_valid_ttl,
    }


def pool_settings(gw) -> PoolSettings:
    return PoolSettings(
        max_idle=gw.upstream_keepalive_pool_size,
        max_requests=gw.upstream_keepalive_max_requests,
        idle_timeout=gw.upstream_keepalive_idle_timeout,
    )


def split_listen(listen: str) -> tuple[str, int]:
    """``0.0.0.0:8000`` / ``[::]:8000`` / ``:8000`` / ``*:8000`` -> (host, port); flags after the address (``0.0.0.0:8443
    ssl``) are not part of it."""
    host, _, port = listen.split()[0].rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("", "*"):
        host = "0.0.0.0"
    return host, int(port)
