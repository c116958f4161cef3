"""Upstream health checks: Kong's ``healthchecks`` record (active probes and passive outlier detection).

**State machine** (lua-resty-healthcheck, the library Kong uses). Each target has four counters: successes,
HTTP failures, TCP failures and timeouts. A failure resets only the success counter; a success resets all three
failure counters. A target is in one of four internal states:

- ``healthy`` and ``unhealthy``: settled. Successes are not counted in ``healthy``, failures not in ``unhealthy``.
- ``mostly_healthy``: healthy, but failures are being counted; ``mostly_unhealthy``: unhealthy, successes counted.

A report of kind K whose counter reaches its threshold moves the target fully to that side (``healthy`` or
``unhealthy``) and clears every counter; below the threshold a ``healthy`` target becomes ``mostly_healthy`` on a
failure and an ``unhealthy`` one ``mostly_unhealthy`` on a success (so it stays on its side). A threshold of 0
disables that kind of report entirely (it neither counts nor resets anything). Traffic goes only to targets that
are ``healthy`` or ``mostly_healthy``.

**Active** checks probe every target of an upstream on a timer: targets currently healthy every
``active.healthy.interval`` seconds, unhealthy ones every ``active.unhealthy.interval`` (0 disables that group). A
probe is one short-lived connection (asyncio, HTTP parsed by httptools) bounded by ``active.timeout``; at most
``active.concurrency`` probes of an upstream run at once. **Passive** checks count the outcomes of real traffic,
which the proxy reports with ``HealthTable.report``. As in Kong, a target that passive checks marked unhealthy comes
back only through active checks (``active.unhealthy.interval`` > 0) or a manual re-enable (``set_health``).

**Scope.** One ``HealthTable`` per worker process; workers do not share state (each probes on its own, as each
Kong/nginx worker did before Kong moved health state to shared memory). Health is kept per target (its ``host:port``
as configured), by upstream name, and survives a config reload for every target that still exists. The balancer
reads one attribute, ``Target.healthy``, which this module keeps up to date on every ``Target`` of the upstream (one
per service using it).

**Visibility.** Each worker writes ``<pid file>.health.<worker index>.json`` (atomically) when a target's health
changes and once per ``STATUS_PERIOD`` while checks run; ``gwanmun health`` reads them (see gwanmun/cli.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import httptools
import orjson

log = logging.getLogger("gwanmun.health")

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
MOSTLY_HEALTHY = "mostly_healthy"
MOSTLY_UNHEALTHY = "mostly_unhealthy"

SUCCESS, HTTP, TCP, TIMEOUT = "success", "http", "tcp", "timeout"
KINDS = (HTTP, TCP, TIMEOUT)

STATUS_PERIOD = 5.0  # seconds between two status-file refreshes while nothing changes (counters move meanwhile)


# ---------------------------------------------------------------------------------------------------------------
# Compiled settings (from config.model.HealthchecksConfig; see config/compile.py)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One side's (active or passive) limits. A limit of 0 disables that kind of report."""

    successes: int = 0
    http_failures: int = 0
    tcp_failures: int = 0
    timeouts: int = 0
    healthy_statuses: frozenset[int] = frozenset()
    unhealthy_statuses: frozenset[int] = frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self.successes or self.http_failures or self.tcp_failures or self.timeouts)

    def limit(self, kind: str) -> int:
        if kind == SUCCESS:
            return self.successes
        if kind == HTTP:
            return self.http_failures
        if kind == TCP:
            return self.tcp_failures
        return self.timeouts


@dataclass(frozen=True, slots=True)
class ActiveSpec:
    type: str = "http"  # http | https | tcp
    timeout: float = 1.0
    concurrency: int = 10
    http_path: str = "/"
    https_sni: str | None = None
    https_verify_certificate: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    healthy_interval: float = 0.0
    unhealthy_interval: float = 0.0
    thresholds: Thresholds = Thresholds()

    @property
    def enabled(self) -> bool:
        return self.healthy_interval > 0 or self.unhealthy_interval > 0


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """An upstream's compiled ``healthchecks`` and its targets (``(label, host, port)``, in config order)."""

    upstream: str
    targets: tuple[tuple[str, str, int], ...] = ()
    active: ActiveSpec = ActiveSpec()
    passive: Thresholds = Thresholds()

    @property
    def enabled(self) -> bool:
        return self.active.enabled or self.passive.enabled


def compile_healthchecks(name: str, hc: Any, targets: Iterable[tuple[str, str, int]]) -> HealthSpec:
    """``hc``: a validated ``HealthchecksConfig``."""
    a, p = hc.active, hc.passive
    return HealthSpec(
        upstream=name,
        targets=tuple(targets),
        active=ActiveSpec(
            type=a.type,
            timeout=float(a.timeout),
            concurrency=a.concurrency,
            http_path=a.http_path,
            https_sni=a.https_sni,
            https_verify_certificate=a.https_verify_certificate,
            headers=tuple((k, v) for k, vs in (a.headers or {}).items() for v in vs),
            healthy_interval=float(a.healthy.interval),
            unhealthy_interval=float(a.unhealthy.interval),
            thresholds=Thresholds(
                successes=a.healthy.successes,
                http_failures=a.unhealthy.http_failures,
                tcp_failures=a.unhealthy.tcp_failures,
                timeouts=a.unhealthy.timeouts,
                healthy_statuses=frozenset(a.healthy.http_statuses),
                unhealthy_statuses=frozenset(a.unhealthy.http_statuses),
            ),
        ),
        passive=Thresholds(
            successes=p.healthy.successes,
            http_failures=p.unhealthy.http_failures,
            tcp_failures=p.unhealthy.tcp_failures,
            timeouts=p.unhealthy.timeouts,
            healthy_statuses=frozenset(p.healthy.http_statuses),
            unhealthy_statuses=frozenset(p.unhealthy.http_statuses),
        ),
    )


# ---------------------------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class TargetHealth:
    """One target's health in one worker, and the ``Target`` objects (one per service) whose ``healthy`` it sets."""

    label: str
    host: str
    port: int
    state: str = HEALTHY
    successes: int = 0
    http_failures: int = 0
    tcp_failures: int = 0
    timeouts: int = 0
    changed_at: float = 0.0  # time.time() of the last change of side
    reason: str = ""  # what made it change side last
    bound: list = field(default_factory=list)  # balancer.Target objects

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY or self.state == MOSTLY_HEALTHY

    def counters(self) -> dict[str, int]:
        return {"successes": self.successes, "http_failures": self.http_failures,
                "tcp_failures": self.tcp_failures, "timeouts": self.timeouts}

    def record(self, kind: str, limit: int) -> bool:
        """Count one report (``SUCCESS`` or a failure kind) against ``limit``. Returns True if the target changed
        side (healthy <-> unhealthy). Kong's rules: see the module docstring."""
        if limit <= 0:
            return False  # this kind of check is disabled: no counting, no reset
        success = kind == SUCCESS
        state = self.state
        if success and state == HEALTHY or not success and state == UNHEALTHY:
            return False  # already settled on that side: nothing to count
        if success:
            self.http_failures = self.tcp_failures = self.timeouts = 0
            self.successes += 1
            count = self.successes
        else:
            self.successes = 0
            if kind == HTTP:
                self.http_failures += 1
                count = self.http_failures
            elif kind == TCP:
                self.tcp_failures += 1
                count = self.tcp_failures
            else:
                self.timeouts += 1
                count = self.timeouts
        was = self.healthy
        if count >= limit:
            self.state = HEALTHY if success else UNHEALTHY
            self.successes = self.http_failures = self.tcp_failures = self.timeouts = 0
        elif state == HEALTHY:  # a failure below the limit
            self.state = MOSTLY_HEALTHY
        elif state == UNHEALTHY:  # a success below the limit
            self.state = MOSTLY_UNHEALTHY
        return self.healthy != was

    def set(self, healthy: bool) -> bool:
        """Force a side (a manual re-enable or disable). Returns True if it changed side."""
        was = self.healthy
        self.state = HEALTHY if healthy else UNHEALTHY
        self.successes = self.http_failures = self.tcp_failures = self.timeouts = 0
        return was != healthy

    def publish(self) -> None:
        h = self.healthy
        for t in self.bound:
            t.healthy = h


def classify(status: int | None, kind: str, th: Thresholds) -> str | None:
    """An outcome -> the counter it feeds (``SUCCESS``, ``HTTP``, ``TCP``, ``TIMEOUT``), or None if it feeds none
    (an HTTP status in neither list)."""
    if kind == HTTP:
        if status is None:
            return None
        if status in th.healthy_statuses:
            return SUCCESS
        if status in th.unhealthy_statuses:
            return HTTP
        return None
    if kind == TCP or kind == TIMEOUT:
        return kind
    if kind == SUCCESS:
        return SUCCESS
    raise ValueError(f"unknown report kind {kind!r}")


# ---------------------------------------------------------------------------------------------------------------
# Active probes
# ---------------------------------------------------------------------------------------------------------------


class _HeadReader(asyncio.Protocol):
    """Reads a response head with httptools; resolves ``done`` with the status (or an exception)."""

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.on_headers_complete()
        except httptools.HttpParserError as exc:
            if not self.done.done():
                self.done.set_exception(ConnectionError(f"invalid response: {exc}"))

    def on_headers_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(self.parser.get_status_code())

    def eof_received(self):
        if not self.done.done():
            self.done.set_exception(ConnectionError("connection closed before a response"))
        return False

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("connection closed before a response"))


def probe_request(spec: ActiveSpec, host: str, port: int) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if spec.type == "https" else 80
    host_value = shown if port == default else f"{shown}:{port}"
    lines = [f"GET {spec.http_path} HTTP/1.0", f"Host: {host_value}", "Connection: close",
             "User-Agent: gwanmun-healthcheck"]
    lines.extend(f"{k}: {v}" for k, v in spec.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def _probe_tls(verify: bool) -> ssl.SSLContext:
    ctx = _CONTEXTS.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _CONTEXTS[verify] = ctx
    return ctx


async def probe(spec: ActiveSpec, host: str, port: int) -> tuple[str, int | None]:
    """One active check of ``host:port``: ``(SUCCESS, None)`` for a tcp check that connected, ``(HTTP, status)``
    for an http(s) answer, ``(TCP, None)`` when the connection (or TLS, or the response) failed, ``(TIMEOUT,
    None)`` when ``spec.timeout`` passed first. Never raises, never blocks the loop."""
    loop = asyncio.get_running_loop()
    transport = None
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.type == "tcp":
                transport, _ = await loop.create_connection(asyncio.Protocol, host, port)
                return SUCCESS, None
            done: asyncio.Future = loop.create_future()
            tls = _probe_tls(spec.https_verify_certificate) if spec.type == "https" else None
            transport, _ = await loop.create_connection(
                lambda: _HeadReader(done), host, port, ssl=tls,
                server_hostname=(spec.https_sni or host) if tls is not None else None,
            )
            transport.write(probe_request(spec, host, port))
            status = await done
            return HTTP, status
    except TimeoutError:
        return TIMEOUT, None
    except (OSError, ssl.SSLError, ValueError):
        return TCP, None
    finally:
        if transport is not None:
            transport.abort()


# ---------------------------------------------------------------------------------------------------------------
# One upstream's health in one worker
# ---------------------------------------------------------------------------------------------------------------


class UpstreamHealth:
    def __init__(self, spec: HealthSpec, on_change: Callable[[], None] = lambda: None) -> None:
        self.spec = spec
        self.targets: dict[str, TargetHealth] = {}
        self.on_change = on_change
        self.task: asyncio.Task | None = None
        self.next_healthy = 0.0  # loop time of the next round of probes of healthy targets
        self.next_unhealthy = 0.0

    # reports ----------------------------------------------------------------------------------------------------
    def _count(self, th: TargetHealth, kind: str, thresholds: Thresholds, source: str) -> None:
        if th.record(kind, thresholds.limit(kind)):
            th.changed_at = time.time()
            th.reason = f"{source} {kind}" if kind != SUCCESS else f"{source} successes"
            th.publish()
            log.warning("target %s of upstream %s is now %s (%s)", th.label, self.spec.upstream,
                        "healthy" if th.healthy else "unhealthy", th.reason,
                        extra={"fields": {"event": "target_health", "upstream": self.spec.upstream,
                                          "target": th.label, "healthy": th.healthy, "reason": th.reason}})
            self.on_change()

    def passive(self, th: TargetHealth, status: int | None, kind: str) -> None:
        p = self.spec.passive
        if not p.enabled:
            return
        counter = classify(status, kind, p)
        if counter is not None:
            self._count(th, counter, p, "passive")

    def active(self, th: TargetHealth, status: int | None, kind: str) -> None:
        a = self.spec.active.thresholds
        counter = classify(status, kind, a)
        if counter is not None:
            self._count(th, counter, a, "active")

    # scheduling -------------------------------------------------------------------------------------------------
    def due(self, now: float) -> tuple[list[TargetHealth], float]:
        """The targets to probe at loop time ``now`` and the time of the next round (Kong runs one timer for healthy
        targets, at ``healthy.interval``, and one for unhealthy targets, at ``unhealthy.interval``)."""
        a = self.spec.active
        batch: list[TargetHealth] = []
        if a.healthy_interval > 0 and now >= self.next_healthy:
            batch.extend(t for t in self.targets.values() if t.healthy)
            self.next_healthy = now + a.healthy_interval
        if a.unhealthy_interval > 0 and now >= self.next_unhealthy:
            batch.extend(t for t in self.targets.values() if not t.healthy)
            self.next_unhealthy = now + a.unhealthy_interval
        nexts = [n for n, i in ((self.next_healthy, a.healthy_interval), (self.next_unhealthy, a.unhealthy_interval))
                 if i > 0]
        return batch, min(nexts) if nexts else now + 3600.0

    async def run(self, prober=probe) -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(max(1, self.spec.active.concurrency))

        async def one(th: TargetHealth) -> None:
            async with sem:
                spec = self.spec.active  # read afresh: a reload may change it
                kind, status = await prober(spec, th.host, th.port)
                if self.targets.get(th.label) is th:  # still a target after the await
                    self.active(th, status, kind)

        while True:
            batch, wake = self.due(loop.time())
            if batch:
                await asyncio.gather(*(one(th) for th in batch))
            await asyncio.sleep(max(0.0, wake - loop.time()))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.task is None and self.spec.active.enabled:
            self.task = loop.create_task(self.run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


# ---------------------------------------------------------------------------------------------------------------
# A worker's table
# ---------------------------------------------------------------------------------------------------------------


class HealthTable:
    """Every upstream's target health in one worker. ``apply`` (at start and on each reload) binds the runtime's
    ``Target`` objects; ``report`` is the passive-check entry point for the proxy."""

    def __init__(self, status_path: str | None = None, worker: int = 0) -> None:
        self.upstreams: dict[str, UpstreamHealth] = {}
        self.by_target: dict[Any, tuple[UpstreamHealth, TargetHealth]] = {}  # balancer.Target -> its state
        self.loop: asyncio.AbstractEventLoop | None = None
        self.status_path = status_path
        self.worker = worker
        self._write_scheduled = False
        self._refresher: asyncio.TimerHandle | None = None

    # the proxy's entry point -------------------------------------------------------------------------------------
    def report(self, target: Any, status: int | None, kind: str) -> None:
        """An outcome of real traffic to ``target`` (a ``balancer.Target``): ``kind`` ``'http'`` with the response
        status, ``'tcp'`` (connect refused or reset, invalid response, closed before the response) or
        ``'timeout'`` (connect or read timed out), status None. Cheap when passive checks are off."""
        found = self.by_target.get(target)
        if found is not None:
            found[0].passive(found[1], status, kind)

    # configuration ----------------------------------------------------------------------------------------------
    def apply(self, specs: Iterable[HealthSpec], services: Iterable[Any] = ()) -> None:
        """Adopt a runtime's upstreams (``specs``) and services (whose ``balancer.targets`` are bound). Targets that
        still exist keep their state; an upstream whose checks are all off has every target healthy."""
        old = self.upstreams
        new: dict[str, UpstreamHealth] = {}
        for spec in specs:
            uh = old.get(spec.upstream)
            if uh is None:
                uh = UpstreamHealth(spec, self.changed)
            else:
                uh.spec = spec
            before = uh.targets
            uh.targets = {}
            for label, host, port in spec.targets:
                th = before.get(label)
                if th is None:
                    th = TargetHealth(label, host, port, changed_at=time.time())
                if not spec.enabled and not th.healthy:
                    th.set(True)
                    th.reason = "health checks disabled"
                th.bound = []
                uh.targets[label] = th
            new[spec.upstream] = uh
        for name, uh in old.items():
            if name not in new or not new[name].spec.active.enabled:
                uh.stop()
        self.upstreams = new
        by_target: dict[Any, tuple[UpstreamHealth, TargetHealth]] = {}
        for svc in services:
            name = getattr(svc, "upstream", None)
            uh = new.get(name) if name else None
            if uh is None:
                continue
            passive = uh.spec.passive.enabled
            for t in svc.balancer.targets:
                th = uh.targets.get(t.label)
                if th is not None:
                    th.bound.append(t)
                    if passive:  # report() is then one dict miss for everything else
                        by_target[t] = (uh, th)
        for t in self.by_target:
            t.watched = False
        for t in by_target:
            t.watched = True  # the proxy calls report() only for these (one attribute read for the rest)
        self.by_target = by_target
        for uh in new.values():
            for th in uh.targets.values():
                th.publish()
        if self.loop is not None:
            self.start(self.loop)
            self.changed()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for uh in self.upstreams.values():
            uh.start(loop)
        if self._refresher is None and self.status_path:
            self.write_status()
            self._refresh()

    def close(self) -> None:
        for uh in self.upstreams.values():
            uh.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self.status_path:
            try:
                os.unlink(self.status_path)
            except OSError:
                pass

    def set_health(self, upstream: str, target: str, healthy: bool) -> bool:
        """A manual re-enable (or disable) of one target, as Kong's ``POST /upstreams/{u}/targets/{t}/healthy``.
        Returns False if there is no such target."""
        uh = self.upstreams.get(upstream)
        th = uh.targets.get(target) if uh is not None else None
        if th is None:
            return False
        if th.set(healthy):
            th.changed_at = time.time()
            th.reason = "set manually"
        th.publish()
        self.changed()
        return True

    # status -----------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        ups = {}
        for name, uh in self.upstreams.items():
            s = uh.spec
            ups[name] = {
                "active": s.active.enabled,
                "passive": s.passive.enabled,
                "targets": [
                    {"target": th.label, "health": HEALTHY if th.healthy else UNHEALTHY, "state": th.state,
                     "counters": th.counters(), "since": round(th.changed_at, 3), "reason": th.reason}
                    for th in uh.targets.values()
                ],
            }
        return {"pid": os.getpid(), "worker": self.worker, "time": round(time.time(), 3), "upstreams": ups}

    def changed(self) -> None:
        """Health changed: write the status file soon (once per loop iteration however many changes)."""
        if not self.status_path or self._write_scheduled:
            return
        if self.loop is None:
            self.write_status()
            return
        self._write_scheduled = True
        self.loop.call_soon(self.write_status)

    def _refresh(self) -> None:
        if any(uh.spec.enabled for uh in self.upstreams.values()):
            self.write_status()  # counters move without a change of side: keep the file fresh
        assert self.loop is not None
        self._refresher = self.loop.call_later(STATUS_PERIOD, self._refresh)

    def write_status(self) -> None:
        self._write_scheduled = False
        path = self.status_path
        if not path:
            return
        try:
            write_atomic(path, orjson.dumps(self.snapshot(), option=orjson.OPT_INDENT_2))
        except OSError as exc:  # never let visibility break serving
            log.debug("cannot write health status %s: %s", path, exc)


def write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gwanmun-health-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def status_path(pid_file: str | None, worker: int) -> str | None:
    """Where worker ``worker`` writes its health status: ``<pid file>.health.<worker>.json``; None without a pid
    file."""
    return f"{pid_file}.health.{worker}.json" if pid_file else None
