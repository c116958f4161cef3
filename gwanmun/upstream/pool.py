"""Keep-alive pools of upstream connections, one pool per target (host, port).

A TLS pool is keyed by (host, port, TLS settings, SNI) instead: connections made with other settings (plain, another
CA, no verification, another client certificate) or for another server name are never shared.

Pools live for the whole worker, across config reloads, so a reload never drops warm connections. Idle
connections are reused last-in first-out (the warmest socket first) and swept by one periodic timer per worker,
so the request path never arms or cancels a timer for pooling.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

from .connection import UpstreamConnection


@dataclass(slots=True)
class PoolSettings:
    max_idle: int = 512  # idle connections kept per target (Kong: upstream_keepalive_pool_size); 0 disables reuse
    max_requests: int = 10000  # requests per connection before it is closed (upstream_keepalive_max_requests); 0: no limit
    idle_timeout: float = 60.0  # seconds an idle connection is kept (upstream_keepalive_idle_timeout); 0: forever


class Pool:
    __slots__ = ("key", "settings", "idle", "active", "tls", "sni")

    def __init__(self, key: tuple[Any, ...], settings: PoolSettings, tls: Any = None, sni: str = "") -> None:
        self.key = key
        self.settings = settings
        self.idle: list[UpstreamConnection] = []
        self.active = 0  # connections in use by an exchange (for least-connections later, and status)
        self.tls = tls  # gwanmun.tls.UpstreamTLS: connections speak TLS with its context
        self.sni = sni  # with tls: server name sent and verified

    def acquire(self) -> UpstreamConnection | None:
        """An idle live connection, or None. Synchronous: the hot path never awaits for a pooled connection."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:  # set by eof_received/connection_lost/close, so no transport call is needed
                self.active += 1
                return conn
        return None

    async def connect(self, host: str, port: int, timeout: float) -> UpstreamConnection:
        """Open a new connection (with a TLS handshake for a TLS pool); raises OSError (ssl.SSLError for a failed
        handshake or verification) or TimeoutError."""
        loop = asyncio.get_running_loop()
        tls = self.tls
        async with asyncio.timeout(timeout):
            if tls is None:
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self), host, port)
            else:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), host, port, ssl=tls.context, server_hostname=self.sni or host
                )
        if tls is not None:
            try:
                tls.check(conn.transport)
            except OSError:
                conn.close()
                raise
        sock = conn.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        self.active += 1
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection after a complete exchange; it is kept only if it can serve another one."""
        self.active -= 1
        conn.exchange = None
        s = self.settings
        if (
            not conn.closed
            and (s.max_requests == 0 or conn.requests < s.max_requests)  # Kong: 0 = no limit
            and len(self.idle) < s.max_idle
        ):
            conn.idle_since = now
            self.idle.append(conn)
        else:
            conn.close()

    def drop(self, conn: UpstreamConnection) -> None:
        """An exchange gives up a connection that must not be reused."""
        self.active -= 1
        conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        """The connection closed on its own; forget it if idle."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float) -> None:
        if self.settings.idle_timeout <= 0:
            return  # Kong: 0 keeps idle connections open indefinitely
        limit = now - self.settings.idle_timeout
        idle = self.idle
        # idle is ordered by idle_since (appended at release), oldest first
        n = 0
        while n < len(idle) and idle[n].idle_since <= limit:
            n += 1
        if n:
            stale, self.idle = idle[:n], idle[n:]
            for conn in stale:
                conn.close()


class Pools:
    """All pools of a worker, keyed by target address."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        self._pools: dict[tuple[Any, ...], Pool] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def get(self, host: str, port: int, tls: Any = None, sni: str = "") -> Pool:
        key: tuple[Any, ...] = (host, port) if tls is None else (host, port, tls.key, sni)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(key, self.settings, tls, sni)
        return pool

    def for_target(self, target) -> Pool:
        """The pool for a target, remembered on the target so later requests skip the lookup."""
        pool = target.pool = self.get(target.host, target.port, target.tls, target.sni)
        return pool

    def for_tls(self, target, addr: str, host: str) -> Pool:
        """The pool of a TLS target (``target.tls`` set) at ``addr``. ``host`` is the client's Host when the route
        preserves it, else "": Kong sends the Host it sends upstream as SNI (nginx ``proxy_ssl_name
        $upstream_host``), so a preserved Host is also the SNI, and connections are pooled per name."""
        if host:
            return self.get(addr, target.port, target.tls, host_name(host))
        if not target.named:
            return target.pool or self.for_target(target)
        return self.get(addr, target.port, target.tls, target.sni)

    def configure(self, settings: PoolSettings) -> None:
        """Apply new settings to every pool (a config reload); warm connections are kept."""
        self.settings = settings
        for pool in self._pools.values():
            pool.settings = settings

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep(loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for pool in self._pools.values():
            pool.sweep(now)
        idle = self.settings.idle_timeout
        period = max(0.05, min(1.0, idle / 4)) if idle > 0 else 1.0
        self._sweeper = loop.call_later(period, self._sweep, loop)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()

    def __iter__(self):
        return iter(self._pools.values())


def host_name(host: str) -> str:
    """The name in a ``Host`` value, for SNI and certificate verification: lower-case, without port or brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    i = host.rfind(":")
    if i >= 0 and host[i + 1 :].isdigit():
        host = host[:i]
    return host.lower()
