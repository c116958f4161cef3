"""The supervisor's side: every worker's counters summed, and the status listener that serves them.

**Aggregation.** Each worker publishes a snapshot of its counters to shared memory once a second (``publish``,
``shm``). ``Aggregator.collect`` reads every worker's region and sums them with what workers that exited had counted
(read from their region when the supervisor logs ``worker_exited``, so counters never go backwards when a worker is
restarted). Counters are therefore at most ``publish.PUBLISH_INTERVAL`` (1 s) old.

**Supervisor facts** (the config hash, reloads, restarts) come from the supervisor object and from its own log
events (``config_reloaded``, ``config_unchanged``, ``config_rejected``, ``worker_exited``), which a logging handler
here observes: the supervisor needs no call into this module for them.

**The status listener** (``gateway.status_listen``, Kong's ``status_listen``; default ``127.0.0.1:8100``, ``off``
for none) is served by the supervisor's own ``selectors`` loop: no thread, no event loop, so forking workers stays
safe. It answers one request per connection:

- ``GET /metrics``: Prometheus text (OpenMetrics when the scraper asks for it);
- ``GET /status``: the JSON summary the dashboard and ``gwanmun status`` read (``snapshot()``);
- ``GET /status/ready``: 200 when every worker serves, else 503 (for load balancers and orchestrators);
- ``GET /`` or ``/dashboard``: the live dashboard (static files, no build step).

The handlers are plain functions, ``render_metrics() -> bytes``, ``snapshot() -> dict`` and
``dashboard(path) -> (bytes, content type) | None``, for the Admin API to mount as well.
"""

from __future__ import annotations

import logging
import os
import pickle
import selectors
import socket
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from . import metrics, shm
from .recorder import KONG_SOURCE, LATENCY_BUCKETS

log = logging.getLogger("gwanmun")

DASHBOARD_DIR = Path(__file__).with_name("dashboard")
DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
WINDOW = 10.0  # seconds over which /status computes rates and percentiles
HISTORY = 300  # samples kept for the dashboard's chart (one per second at most: five minutes)
DETAIL_FOR = 30.0  # seconds a sample keeps its per-service/route/consumer detail
TOP = 50  # rows per table in /status
TOP_CLIENTS = 20

_aggregator: Aggregator | None = None


# ---------------------------------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------------------------------
class MSeries:
    """One (service, route, consumer) summed over workers."""

    __slots__ = ("codes", "bytes_in", "bytes_out", "req", "req_sum", "up", "up_sum", "gw", "gw_sum")

    def __init__(self, dump: tuple | None = None) -> None:
        if dump is None:
            self.codes: dict[int, int] = {}
            self.bytes_in = self.bytes_out = 0
            self.req: list[int] = []
            self.up: list[int] = []
            self.gw: list[int] = []
            self.req_sum = self.up_sum = self.gw_sum = 0.0
            return
        (_, _, _, codes, self.bytes_in, self.bytes_out, req, self.req_sum, up, self.up_sum, gw, self.gw_sum) = dump
        self.codes = dict(codes)
        self.req, self.up, self.gw = list(req), list(up), list(gw)

    def add(self, other: MSeries) -> None:
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.req = _add(self.req, other.req)
        self.up = _add(self.up, other.up)
        self.gw = _add(self.gw, other.gw)
        self.req_sum += other.req_sum
        self.up_sum += other.up_sum
        self.gw_sum += other.gw_sum

    @property
    def requests(self) -> int:
        return sum(self.codes.values())


def _add(a: list[int], b: list[int]) -> list[int]:
    if not a:
        return list(b)
    if not b:
        return a
    return [x + y for x, y in zip(a, b)]


class Counts:
    """What is summed over workers: their counters (``series``, ``requests``, ``ratelimit``, ``clients``, ``spans``)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], MSeries] = {}
        self.requests = 0
        self.ratelimit: dict[tuple[str, str, str, str], int] = {}
        self.clients: dict[str, list[int]] = {}  # ip -> [requests, bytes, errors]
        self.clients_floor = 0
        self.spans = 0

    def add_snapshot(self, snap: dict) -> None:
        for dump in snap.get("series", ()):
            key = (dump[0], dump[1], dump[2])
            s = MSeries(dump)
            have = self.series.get(key)
            if have is None:
                self.series[key] = s
            else:
                have.add(s)
        self.requests += snap.get("requests", 0)
        for plugin, service, route, decision, n in snap.get("ratelimit", ()):
            key = (plugin, service, route, decision)
            self.ratelimit[key] = self.ratelimit.get(key, 0) + n
        for ip, n, b, e in snap.get("clients", ()):
            c = self.clients.get(ip)
            if c is None:
                self.clients[ip] = [n, b, e]
            else:
                c[0] += n
                c[1] += b
                c[2] += e
        self.clients_floor = max(self.clients_floor, snap.get("clients_floor", 0))
        self.spans += snap.get("spans", 0)

    def add(self, other: Counts) -> None:
        for key, s in other.series.items():
            have = self.series.get(key)
            if have is None:
                have = self.series[key] = MSeries()
            have.add(s)
        self.requests += other.requests
        for key, n in other.ratelimit.items():
            self.ratelimit[key] = self.ratelimit.get(key, 0) + n
        for ip, (n, b, e) in other.clients.items():
            c = self.clients.setdefault(ip, [0, 0, 0])
            c[0] += n
            c[1] += b
            c[2] += e
        self.clients_floor = max(self.clients_floor, other.clients_floor)
        self.spans += other.spans


class Aggregate(Counts):
    """Every worker's counters and gauges, as of one ``collect``."""

    def __init__(self) -> None:
        super().__init__()
        self.pid = os.getpid()
        self.time = time.time()
        self.health: dict[tuple[str, str, str], dict[str, int]] = {}
        self.breakers: dict[tuple[str, str], dict[str, int]] = {}
        self.connections: dict[str, int] = {"active": 0, "reading": 0, "waiting": 0}
        self.workers: list[dict[str, Any]] = []
        self.config_hash = ""
        self.generation = 0
        self.reloads: dict[str, int] = {}
        self.last_reload = 0.0
        self.last_reload_result = ""
        self.restarts = 0
        self.started = 0.0


class Aggregator:
    def __init__(self, supervisor: Any = None, regions: shm.Regions | None = None) -> None:
        self.supervisor = supervisor
        self.regions = regions
        self.pid = os.getpid()
        self.started = time.time()
        self.retired = Counts()  # what exited workers had counted
        self.folded: set[int] = set()  # pids whose counts are in ``retired``
        self.last: dict[int, dict] = {}  # the last snapshot read of each worker position
        self.restarts = 0
        self.reloads: dict[str, int] = {"reloaded": 0, "unchanged": 0, "rejected": 0}
        self.last_reload = 0.0
        self.last_reload_result = ""
        self.history: deque[dict] = deque(maxlen=HISTORY)

    # -- reading the workers ----------------------------------------------------------------------------------------
    def _read(self, index: int) -> dict | None:
        regions = self.regions
        if regions is None:
            return None
        data = regions.read(index)
        if data is None:
            return self.last.get(index)
        try:
            snap = pickle.loads(data)
        except Exception:  # noqa: BLE001 - a torn or foreign region: use the last good one
            return self.last.get(index)
        self.last[index] = snap
        return snap

    def worker_exited(self, index: int, pid: int) -> None:
        """Keep what an exited worker counted (its last snapshot), once."""
        if pid in self.folded:
            return
        snap = self._read(index)
        if snap is not None and snap.get("pid") == pid:
            self.retired.add_snapshot(snap)
            self.folded.add(pid)

    def collect(self) -> Aggregate:
        agg = Aggregate()
        agg.pid = self.pid
        agg.started = self.started
        agg.add(self.retired)
        sup = self.supervisor
        slots = list(getattr(sup, "slots", ()) or ())
        count = self.regions.count if self.regions is not None else 0
        live = {s.index: s for s in slots}
        for index in range(count):
            snap = self._read(index)
            slot = live.get(index)
            pid = slot.pid if slot is not None else 0
            info: dict[str, Any] = {"worker": index, "pid": pid, "alive": bool(pid),
                                    "ready": bool(slot.ready) if slot is not None else False}
            if snap is not None and snap.get("pid") not in self.folded:
                agg.add_snapshot(snap)
                for k, v in snap.get("connections", {}).items():
                    agg.connections[k] = agg.connections.get(k, 0) + v
                for up, target, address, state in snap.get("health", ()):
                    states = agg.health.setdefault((up, target, address), {})
                    states[state] = states.get(state, 0) + 1
                for service, target, state in snap.get("breakers", ()):
                    states = agg.breakers.setdefault((service, target), {})
                    states[state] = states.get(state, 0) + 1
                info.update({"config_hash": snap.get("config_hash", "")[:12], "requests": snap.get("requests", 0),
                             "connections": snap.get("connections", {}).get("active", 0),
                             "uptime_s": round(time.time() - snap.get("started", time.time()), 1),
                             "published": round(snap.get("time", 0.0), 3)})
                if not pid:
                    info["pid"] = snap.get("pid", 0)
            agg.workers.append(info)
        loaded = getattr(sup, "loaded", None)
        agg.config_hash = loaded.hash[:12] if loaded is not None else ""
        agg.generation = getattr(sup, "generation", 0)
        agg.reloads = dict(self.reloads)
        agg.last_reload = self.last_reload
        agg.last_reload_result = self.last_reload_result
        agg.restarts = self.restarts
        return agg

    # -- supervisor events ------------------------------------------------------------------------------------------
    def on_event(self, name: str, fields: dict) -> None:
        if name == "worker_exited":
            if "restart_in_s" in fields:
                self.restarts += 1
            index, pid = fields.get("worker"), fields.get("pid")
            if isinstance(index, int) and isinstance(pid, int):
                self.worker_exited(index, pid)
        elif name in ("config_reloaded", "config_unchanged", "config_rejected"):
            result = name.split("_", 1)[1]
            self.reloads[result] = self.reloads.get(result, 0) + 1
            self.last_reload = time.time()
            self.last_reload_result = result

    # -- the JSON summary -------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        agg = self.collect()
        now = time.monotonic()
        sample = _sample(agg, now)
        hist = self.history
        if not hist or now - hist[-1]["t"] >= 1.0:
            hist.append(sample)
        for old in hist:
            if now - old["t"] > DETAIL_FOR:
                old.pop("detail", None)
        base = None
        for old in hist:  # the oldest sample within the window that still has its detail
            if old is not sample and now - old["t"] <= WINDOW + 1.0 and "detail" in old and now - old["t"] >= 0.5:
                base = old
                break
        return _summary(agg, sample, base, list(hist))


def _sample(agg: Aggregate, t: float) -> dict[str, Any]:
    """Totals and per-dimension counters at one moment, for rates over a window."""
    detail: dict[tuple[str, str], list] = {}  # (dimension, name) -> [requests, 4xx, 5xx, histogram]
    total = [0, 0, 0]
    hist: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
    for (service, route, consumer), s in agg.series.items():
        n = e4 = e5 = 0
        for code, c in s.codes.items():
            status = code % KONG_SOURCE
            n += c
            if 400 <= status < 500:
                e4 += c
            elif status >= 500:
                e5 += c
        total[0] += n
        total[1] += e4
        total[2] += e5
        hist = _add(hist, s.req)
        keys = [("service", service or "(none)"), ("route", route or "(no route)")]
        if consumer:
            keys.append(("consumer", consumer))
        for key in keys:
            d = detail.get(key)
            if d is None:
                detail[key] = [n, e4, e5, list(s.req)]
            else:
                d[0] += n
                d[1] += e4
                d[2] += e5
                d[3] = _add(d[3], s.req)
    return {"t": t, "wall": agg.time, "requests": total[0], "e4": total[1], "e5": total[2], "hist": hist,
            "detail": detail}


def quantile(q: float, counts: list[int], bounds: tuple[float, ...] = LATENCY_BUCKETS) -> float | None:
    """Prometheus' histogram_quantile on per-bucket counts (the last is +Inf), linear within a bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    acc = 0
    for i, n in enumerate(counts):
        if acc + n >= rank and n > 0:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return round(lower + (bounds[i] - lower) * (rank - acc) / n, 3)
        acc += n
    return bounds[-1]


def _delta(a: list[int], b: list[int] | None) -> list[int]:
    if not b:
        return a
    return [max(0, x - y) for x, y in zip(a, b)]


def _summary(agg: Aggregate, now: dict, base: dict | None, history: list[dict]) -> dict[str, Any]:
    from .. import __version__

    span = (now["t"] - base["t"]) if base is not None else 0.0
    if base is not None and span > 0:
        window_hist = _delta(now["hist"], base["hist"])
        rps = (now["requests"] - base["requests"]) / span
        n = now["requests"] - base["requests"]
        err5 = (now["e5"] - base["e5"]) / n if n > 0 else 0.0
        err4 = (now["e4"] - base["e4"]) / n if n > 0 else 0.0
    else:
        window_hist = now["hist"]
        rps = None
        err5 = now["e5"] / now["requests"] if now["requests"] else 0.0
        err4 = now["e4"] / now["requests"] if now["requests"] else 0.0
    if not sum(window_hist):  # nothing in the window: percentiles since start
        window_hist = now["hist"]
    statuses: dict[str, int] = {}
    for s in agg.series.values():
        for code, c in s.codes.items():
            k = f"{(code % KONG_SOURCE) // 100}xx"
            statuses[k] = statuses.get(k, 0) + c

    def table(dimension: str) -> list[dict[str, Any]]:
        rows = []
        bd = base["detail"] if base is not None else {}
        for (dim, name), (n, e4, e5, hist) in now["detail"].items():
            if dim != dimension:
                continue
            prev = bd.get((dim, name))
            dn = n - prev[0] if prev else n
            d4 = e4 - prev[1] if prev else e4
            d5 = e5 - prev[2] if prev else e5
            h = _delta(hist, prev[3] if prev else None)
            if not sum(h):
                h = hist
            rows.append({
                "name": name, "requests": n, "errors_4xx": e4, "errors_5xx": e5,
                "rate": round(dn / span, 2) if span > 0 else None,
                "error_rate": round(d5 / dn, 4) if dn > 0 else (round(e5 / n, 4) if n and span <= 0 else 0.0),
                "client_error_rate": round(d4 / dn, 4) if dn > 0 else (round(e4 / n, 4) if n and span <= 0 else 0.0),
                "p50_ms": quantile(0.5, h), "p95_ms": quantile(0.95, h), "p99_ms": quantile(0.99, h),
            })
        rows.sort(key=lambda r: (-(r["rate"] or 0), -r["requests"]))
        return rows[:TOP]

    clients = sorted(agg.clients.items(), key=lambda kv: -kv[1][0])[:TOP_CLIENTS]
    health = []
    for (up, target, address), states in sorted(agg.health.items()):
        if len(states) == 1:
            state = next(iter(states))
        else:
            state = "mixed"
        health.append({"upstream": up, "target": target, "address": address, "health": state,
                       "workers": states})
    breakers = []
    for (service, target), states in sorted(agg.breakers.items()):
        worst = "open" if states.get("open") else "half_open" if states.get("half_open") else "closed"
        breakers.append({"service": service, "target": target or None, "state": worst, "workers": states})
    live = [w for w in agg.workers if w.get("alive")]
    return {
        "gwanmun": {"version": __version__, "pid": agg.pid, "uptime_s": round(time.time() - agg.started, 1)},
        "time": round(agg.time, 3),
        "window_s": round(span, 2) if span else None,
        "requests": {
            "total": agg.requests,
            "rate": round(rps, 2) if rps is not None else None,
            "error_rate": round(err5, 4),
            "client_error_rate": round(err4, 4),
            "by_status": dict(sorted(statuses.items())),
            "latency_ms": {"p50": quantile(0.5, window_hist), "p95": quantile(0.95, window_hist),
                           "p99": quantile(0.99, window_hist)},
        },
        "connections": agg.connections,
        "services": table("service"),
        "routes": table("route"),
        "consumers": table("consumer"),
        "clients": [{"client": ip, "requests": n, "bytes": b, "errors": e} for ip, (n, b, e) in clients],
        "clients_floor": agg.clients_floor,
        "upstreams": health,
        "breakers": breakers,
        "ratelimit": [{"plugin": k[0], "service": k[1], "route": k[2], "decision": k[3], "count": n}
                      for k, n in sorted(agg.ratelimit.items())],
        "config": {
            "hash": agg.config_hash, "generation": agg.generation, "reloads": agg.reloads,
            "last_reload": round(agg.last_reload, 3) if agg.last_reload else None,
            "last_reload_result": agg.last_reload_result or None,
            "workers": [{"worker": w["worker"], "config_hash": w.get("config_hash")} for w in agg.workers],
        },
        "workers": agg.workers,
        "workers_running": len(live),
        "worker_restarts": agg.restarts,
        "tracing_spans": agg.spans,
        "history": [_point(a, b) for a, b in zip(history, history[1:])],
    }


def _point(a: dict, b: dict) -> list:
    """[wall time, req/s, 5xx ratio, p99 ms] between two samples."""
    dt = b["t"] - a["t"]
    n = b["requests"] - a["requests"]
    h = _delta(b["hist"], a["hist"])
    return [round(b["wall"], 3), round(n / dt, 2) if dt > 0 else 0.0,
            round((b["e5"] - a["e5"]) / n, 4) if n > 0 else 0.0, quantile(0.99, h)]


# ---------------------------------------------------------------------------------------------------------------------
# the plain handlers (also for the Admin API)
# ---------------------------------------------------------------------------------------------------------------------
def aggregator() -> Aggregator:
    global _aggregator
    if _aggregator is None:
        _aggregator = Aggregator(None, shm.regions())
    return _aggregator


def render_metrics(openmetrics: bool = False) -> bytes:
    """Every worker's metrics, summed, as Prometheus text."""
    return metrics.render(aggregator().collect(), openmetrics)


def snapshot() -> dict[str, Any]:
    """The JSON summary (what the dashboard and ``gwanmun status`` show)."""
    return aggregator().snapshot()


def ready() -> bool:
    sup = aggregator().supervisor
    slots = getattr(sup, "slots", None)
    return bool(slots) and all(s.pid and s.ready for s in slots) and not getattr(sup, "stopping", False)


def dashboard(path: str = "index.html") -> tuple[bytes, str] | None:
    """A dashboard file (``index.html``, ``dashboard.js``, ``dashboard.css``) and its content type."""
    name = path.strip("/") or "index.html"
    ctype = DASHBOARD_FILES.get(name)
    if ctype is None:
        return None
    try:
        return (DASHBOARD_DIR / name).read_bytes(), ctype
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# supervisor wiring
# ---------------------------------------------------------------------------------------------------------------------
class _EventTap(logging.Handler):
    """Sees the supervisor's own log events (only in the supervisor process; workers inherit it after the fork)."""

    def __init__(self, agg: Aggregator) -> None:
        super().__init__(logging.DEBUG)
        self.agg = agg

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.agg.pid:
            return
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and "event" in fields:
            try:
                self.agg.on_event(fields["event"], fields)
            except Exception:  # noqa: BLE001
                pass


def start(supervisor: Any) -> StatusServer | None:
    """In the supervisor, before the workers are forked: the shared regions, the aggregator, the event tap, and the
    status listener (unless ``status_listen: off``). A listener that cannot be bound is logged
    (``status_listen_failed``) and the gateway runs without it."""
    global _aggregator
    regions = shm.create(supervisor.nworkers)
    agg = _aggregator = Aggregator(supervisor, regions)
    logging.getLogger("gwanmun").addHandler(_EventTap(agg))
    address = getattr(supervisor.running_gateway, "status_listen", "off")
    if not address or address == "off":
        return None
    from ..server import address_of, event

    try:
        sock = _bind(address)
        sock.listen(128)
    except OSError as exc:
        event("status_listen_failed", logging.WARNING, address=address, error=exc.strerror or str(exc),
              hint="the gateway serves without its status listener (/metrics, /status, the dashboard)")
        return None
    server = StatusServer(sock, supervisor.selector)
    event("status_listening", address=address_of(sock), metrics=f"http://{address_of(sock)}/metrics",
          dashboard=f"http://{address_of(sock)}/")
    return server


def _bind(address: str) -> socket.socket:
    """A listening socket without SO_REUSEPORT (a second gateway must fail to bind, not share the port)."""
    from ..server import split_listen

    host, port = split_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


MAX_CONNECTIONS = 64
MAX_HEAD = 16 * 1024
IDLE = 10.0  # seconds a connection may take to send its request


class _Conn:
    __slots__ = ("sock", "buf", "out", "t0")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.out = memoryview(b"")
        self.t0 = time.monotonic()


class StatusServer:
    """HTTP/1.1, one request per connection, on the supervisor's selector (non-blocking; never waits)."""

    def __init__(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        self.sock = sock
        self.selector = selector
        self.conns: dict[socket.socket, _Conn] = {}
        selector.register(sock, selectors.EVENT_READ, self._on_accept)
        os.register_at_fork(after_in_child=self._forget)  # a forked worker must not keep the listener open

    def _forget(self) -> None:
        """In a forked child: close our copies of the listener and of the connections (not the parent's)."""
        for c in self.conns.values():
            c.sock.close()
        self.conns = {}
        self.sock.close()

    def close(self) -> None:
        for c in list(self.conns.values()):
            self._close(c)
        try:
            self.selector.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()

    def _on_accept(self, mask: int) -> None:
        now = time.monotonic()
        for c in [c for c in self.conns.values() if now - c.t0 > IDLE]:
            self._close(c)
        for _ in range(16):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                oldest = min(self.conns.values(), key=lambda c: c.t0)
                self._close(oldest)
            sock.setblocking(False)
            c = _Conn(sock)
            self.conns[sock] = c
            self.selector.register(sock, selectors.EVENT_READ, partial(self._on_conn, c))

    def _close(self, c: _Conn) -> None:
        self.conns.pop(c.sock, None)
        try:
            self.selector.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _on_conn(self, c: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ and not c.out:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self._close(c)
            if not data:
                return self._close(c)
            c.buf += data
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(c.buf) > MAX_HEAD:
                    self._respond(c, 431, b'{"message":"request header too large"}', "application/json")
                return
            self._respond(c, *handle(bytes(c.buf[:end])))
            return
        if mask & selectors.EVENT_WRITE:
            self._send(c)

    def _respond(self, c: _Conn, status: int, body: bytes, ctype: str, head_only: bool = False,
                 extra: tuple[tuple[str, str], ...] = ()) -> None:
        reason = _REASONS.get(status, "OK")
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                 "Cache-Control: no-store", "Connection: close", "X-Content-Type-Options: nosniff"]
        lines += [f"{k}: {v}" for k, v in extra]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        c.out = memoryview(head if head_only else head + body)
        self._send(c)

    def _send(self, c: _Conn) -> None:
        try:
            while c.out:
                n = c.sock.send(c.out)
                c.out = c.out[n:]
        except (BlockingIOError, InterruptedError):
            self.selector.modify(c.sock, selectors.EVENT_WRITE, partial(self._on_conn, c))
            return
        except OSError:
            return self._close(c)
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._close(c)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable", 400: "Bad Request"}
_CSP = ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'")


def handle(head: bytes) -> tuple:
    """One request head -> ``(status, body, content type, head only, extra fields)`` for ``StatusServer``."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, b'{"message":"bad request"}', "application/json", False, ()
    method = parts[0].decode("latin-1")
    path = parts[1].decode("latin-1").split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, b'{"message":"method not allowed"}', "application/json", False, (("Allow", "GET, HEAD"),)
    head_only = method == "HEAD"
    try:
        if path == "/metrics":
            accept = b""
            for field in rest.split(b"\r\n"):
                name, _, value = field.partition(b":")
                if name.strip().lower() == b"accept":
                    accept = value.lower()
            om = b"application/openmetrics-text" in accept
            body = render_metrics(om)
            ctype = ("application/openmetrics-text; version=1.0.0; charset=utf-8" if om else metrics.CONTENT_TYPE)
            return 200, body, ctype, head_only, ()
        if path == "/status":
            return 200, orjson.dumps(snapshot()), "application/json", head_only, ()
        if path == "/status/ready":
            ok = ready()
            return (200 if ok else 503), orjson.dumps({"ready": ok}), "application/json", head_only, ()
        if path in ("/", "/dashboard", "/dashboard/"):
            found = dashboard("index.html")
        elif path.startswith("/dashboard/"):
            found = dashboard(path[len("/dashboard/"):])
        else:
            found = None
        if found is None:
            return 404, b'{"message":"not found"}', "application/json", head_only, ()
        return 200, found[0], found[1], head_only, (_CSP,)
    except Exception:  # noqa: BLE001 - a bug here must not take the supervisor down
        log.exception("status listener: request failed")
        return 500, b'{"message":"internal error"}', "application/json", head_only, ()
