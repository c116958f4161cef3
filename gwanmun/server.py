"""Listeners, the worker's shared state, signals and graceful shutdown.

A ``Worker`` is everything one process shares among its connections: the runtime holder, the upstream pools, the
DNS cache, the access log and the request-id generator. Pools and the DNS cache outlive config reloads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time

import orjson
import uvloop

from . import native
from .config import load_file
from .config.compile import compile_runtime
from .http.downstream import DownstreamProtocol
from .proxy import RequestIds
from .observability.accesslog import AccessLog
from .runtime import Runtime, RuntimeHolder
from .upstream.dns import Resolver
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
    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.holder = RuntimeHolder(runtime)
        gw = runtime.gateway
        self.pools = Pools(pool_settings(gw))
        self.resolver = Resolver(
            hostsfile=gw.dns_hostsfile,
            nameservers=list(gw.dns_resolver),
            stale_ttl=gw.dns_stale_ttl,
            not_found_ttl=gw.dns_not_found_ttl,
            error_ttl=gw.dns_error_ttl,
            valid_ttl=gw.dns_valid_ttl,
        )
        self.access_log = AccessLog(gw.access_log, loop)
        self.connections: set[DownstreamProtocol] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.next_request_id = RequestIds().next

    async def start(self) -> list[str]:
        self.pools.start(self.loop)
        addresses = []
        for listen in self.holder.current.gateway.listen:
            sock = bind(*split_listen(listen))
            port = sock.getsockname()[1]  # the port actually bound (listen on port 0 in tests)
            server = await self.loop.create_server(
                lambda port=port: DownstreamProtocol(self, port), sock=sock, backlog=4096
            )
            self.servers.append(server)
            host = sock.getsockname()[0]
            shown = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
            addresses.append(shown)
            event("listening", address=shown)
        return addresses

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` seconds), then close everything."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.closing = True
            if conn.current is None and not conn.queue:
                conn.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        self.pools.close()
        self.access_log.close()


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


def pool_settings(gw) -> PoolSettings:
    return PoolSettings(
        max_idle=gw.upstream_keepalive_pool_size,
        max_requests=gw.upstream_keepalive_max_requests,
        idle_timeout=gw.upstream_keepalive_idle_timeout,
    )


def split_listen(listen: str) -> tuple[str, int]:
    """``0.0.0.0:8000`` / ``[::]:8000`` / ``:8000`` / ``*:8000`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("", "*"):
        host = "0.0.0.0"
    return host, int(port)


def run(config_path: str) -> int:
    """Load, compile and serve a declarative config until SIGTERM/SIGINT."""
    setup_logging()
    try:
        loaded = load_file(config_path)
        runtime = compile_runtime(loaded)
    except Exception as exc:  # ConfigError prints every issue with file:line
        event("config_rejected", logging.ERROR, file=config_path, errors=str(exc).splitlines())
        return 2
    uvloop.install()
    return asyncio.run(_serve(runtime))


async def _serve(runtime: Runtime) -> int:
    loop = asyncio.get_running_loop()
    worker = Worker(runtime, loop)
    try:
        await worker.start()
    except OSError as exc:
        event("listen_failed", logging.ERROR, error=str(exc))
        return 1
    # Everything built so far (config, compiled routes, pools) lives as long as the process: move it out of the
    # cyclic GC's generations, so collections stop re-scanning 10,000 routes (the gc.freeze() idiom).
    gc.collect()
    gc.freeze()
    compiled, stale = native.status()
    if stale:
        event("stale_compiled_modules", logging.WARNING, modules=stale, hint="reinstall: pip install -e .")
    event("started", config=runtime.source, config_hash=runtime.config_hash[:12], pid=os.getpid(),
          compiled=len(compiled))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    event("stopping", connections=len(worker.connections))
    await worker.shutdown()
    event("stopped")
    return 0
