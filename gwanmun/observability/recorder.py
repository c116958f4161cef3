"""Per-worker request metrics: one ``Recorder.record(ex)`` call per request, from ``Exchange._finish``.

This module is on the request path and compiled with mypyc (setup.py ``HOT_MODULES``): ``record`` reads the
exchange's fields natively and updates plain counters in process memory, about 0.2 µs per request. Nothing here does
I/O or takes a lock; once a second the worker copies ``snapshot()`` into shared memory for the supervisor, which
sums every worker's counters (``gwanmun.observability.publish`` and ``status``).

What is counted, per (service, route, consumer) *series*:

- requests by status code and source (``service``: the upstream's response; ``kong``: the gateway answered itself,
  Kong's ``source`` label);
- bytes in and out (Kong's ``bandwidth_bytes``);
- three latency histograms in milliseconds: the whole request, the upstream's part (first byte sent to the end of
  its response), and the gateway's own share (the difference), with ``LATENCY_BUCKETS`` / ``GATEWAY_BUCKETS``.

And per client address, the top talkers: a bounded table (``TALKERS_CAP`` entries, pruned to the busiest
``TALKERS_KEEP`` when full, so memory is bounded whatever the number of clients: counts of a client that was pruned
and came back start again, so they are lower bounds; ``floor`` is the largest count pruned so far).

Rate-limit decisions come from the rate-limiting plugins through ``gwanmun.observability.metrics.ratelimit``.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..proxy import Exchange

# Histogram bucket upper bounds, in milliseconds. Kong's UPSTREAM_LATENCY_BUCKETS and KONG_LATENCY_BUCKETS are
# subsets; the sub-millisecond ones are added because a gateway's own share is usually well under a millisecond.
# The histogram classes below hold the same bounds as literals (a unit test checks they agree).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 80.0, 100.0, 250.0, 400.0,
                                             700.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0)
GATEWAY_BUCKETS: Final[tuple[float, ...]] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0,
                                             75.0, 100.0, 200.0, 500.0, 750.0, 1000.0)

KONG_SOURCE: Final = 1000  # added to a status code counted with source "kong" (the gateway answered itself)
MAX_SERIES: Final = 10000  # (service, route, consumer) combinations per worker; more go to one "_other" series
TALKERS_CAP: Final = 1024
TALKERS_KEEP: Final = 256
NO_ROUTE: Final = b""  # the series key of requests no route matched


class LatencyHistogram:
    """Counts per ``LATENCY_BUCKETS`` bucket (``b19``: +Inf) and their sum: native fields, so an observation is a
    few comparisons and one increment (no list, no boxing)."""

    def __init__(self) -> None:
        self.b0 = self.b1 = self.b2 = self.b3 = self.b4 = self.b5 = self.b6 = self.b7 = self.b8 = self.b9 = 0
        self.b10 = self.b11 = self.b12 = self.b13 = self.b14 = self.b15 = self.b16 = self.b17 = self.b18 = self.b19 = 0
        self.sum = 0.0

    def add(self, ms: float) -> None:
        self.sum += ms
        if ms <= 0.25:
            self.b0 += 1
        elif ms <= 0.5:
            self.b1 += 1
        elif ms <= 1.0:
            self.b2 += 1
        elif ms <= 2.0:
            self.b3 += 1
        elif ms <= 5.0:
            self.b4 += 1
        elif ms <= 10.0:
            self.b5 += 1
        elif ms <= 25.0:
            self.b6 += 1
        elif ms <= 50.0:
            self.b7 += 1
        elif ms <= 80.0:
            self.b8 += 1
        elif ms <= 100.0:
            self.b9 += 1
        elif ms <= 250.0:
            self.b10 += 1
        elif ms <= 400.0:
            self.b11 += 1
        elif ms <= 700.0:
            self.b12 += 1
        elif ms <= 1000.0:
            self.b13 += 1
        elif ms <= 2000.0:
            self.b14 += 1
        elif ms <= 5000.0:
            self.b15 += 1
        elif ms <= 10000.0:
            self.b16 += 1
        elif ms <= 30000.0:
            self.b17 += 1
        elif ms <= 60000.0:
            self.b18 += 1
        else:
            self.b19 += 1

    def counts(self) -> list[int]:
        return [self.b0, self.b1, self.b2, self.b3, self.b4, self.b5, self.b6, self.b7, self.b8, self.b9,
                self.b10, self.b11, self.b12, self.b13, self.b14, self.b15, self.b16, self.b17, self.b18, self.b19]


class GatewayHistogram:
    """Counts per ``GATEWAY_BUCKETS`` bucket (``b19``: +Inf) and their sum: native fields, so an observation is a
    few comparisons and one increment (no list, no boxing)."""

    def __init__(self) -> None:
        self.b0 = self.b1 = self.b2 = self.b3 = self.b4 = self.b5 = self.b6 = self.b7 = self.b8 = self.b9 = 0
        self.b10 = self.b11 = self.b12 = self.b13 = self.b14 = self.b15 = self.b16 = self.b17 = self.b18 = self.b19 = 0
        self.sum = 0.0

    def add(self, ms: float) -> None:
        self.sum += ms
        if ms <= 0.05:
            self.b0 += 1
        elif ms <= 0.1:
            self.b1 += 1
        elif ms <= 0.25:
            self.b2 += 1
        elif ms <= 0.5:
            self.b3 += 1
        elif ms <= 1.0:
            self.b4 += 1
        elif ms <= 2.0:
            self.b5 += 1
        elif ms <= 5.0:
            self.b6 += 1
        elif ms <= 7.0:
            self.b7 += 1
        elif ms <= 10.0:
            self.b8 += 1
        elif ms <= 15.0:
            self.b9 += 1
        elif ms <= 20.0:
            self.b10 += 1
        elif ms <= 30.0:
            self.b11 += 1
        elif ms <= 50.0:
            self.b12 += 1
        elif ms <= 75.0:
            self.b13 += 1
        elif ms <= 100.0:
            self.b14 += 1
        elif ms <= 200.0:
            self.b15 += 1
        elif ms <= 500.0:
            self.b16 += 1
        elif ms <= 750.0:
            self.b17 += 1
        elif ms <= 1000.0:
            self.b18 += 1
        else:
            self.b19 += 1

    def counts(self) -> list[int]:
        return [self.b0, self.b1, self.b2, self.b3, self.b4, self.b5, self.b6, self.b7, self.b8, self.b9,
                self.b10, self.b11, self.b12, self.b13, self.b14, self.b15, self.b16, self.b17, self.b18, self.b19]


class Series:
    """Counters of one (service, route, consumer)."""

    def __init__(self, service: str, route: str, consumer: str, svc_key: bytes) -> None:
        self.service = service
        self.route = route
        self.consumer = consumer
        self.svc_key = svc_key  # the service's log_name: a route's requests may go to another service (splits)
        # requests by status (+ KONG_SOURCE when the gateway answered): the most recent code in native fields (a
        # route mostly answers one status), the others in ``codes``
        self.code = -1
        self.code_n = 0
        self.codes: dict[int, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.req = LatencyHistogram()
        self.up = LatencyHistogram()
        self.gw = GatewayHistogram()

    def all_codes(self) -> dict[int, int]:
        out = dict(self.codes)
        if self.code_n:
            out[self.code] = out.get(self.code, 0) + self.code_n
        return out

    def dump(self) -> tuple:
        return (self.service, self.route, self.consumer, self.all_codes(), self.bytes_in, self.bytes_out,
                self.req.counts(), self.req.sum, self.up.counts(), self.up.sum, self.gw.counts(), self.gw.sum)


class Talker:
    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.errors = 0  # responses with status >= 400


def _label(entity: Any) -> str:
    if entity is None:
        return ""
    name = entity.name or entity.id
    return str(name) if name else ""


class Recorder:
    """One worker's counters. ``record`` is the only method on the request path."""

    def __init__(self) -> None:
        self.series: dict[bytes, Series] = {}  # by the route's log_name, for requests without a consumer
        self.other: dict[tuple[bytes, bytes, str], Series] = {}  # (route, service, consumer) for the rest
        self.overflow: Series | None = None
        self.count = 0  # series made
        self.requests = 0
        self.clients: dict[str, Talker] = {}
        self.floor = 0
        # (plugin, service, route, decision) -> [count]
        self.ratelimits: dict[tuple[str, str, str, str], list[int]] = {}
        self.tracing: Any = None  # observability.tracing.Tracing while tracing is on: ends the request's span
        # the series of the last request without a consumer, by its route and service objects: most requests on a
        # connection (and in a burst) go to the same route, and comparing two references is cheaper than a look-up
        self.last_route: Any = None
        self.last_service: Any = None
        self.last: Series | None = None
        self.last_ip = "\x00"  # the client of the last request (the same str object for every request of a connection)
        self.last_talker = Talker()
        self.clock = perf_counter  # an attribute: a native read, rather than a module-global look-up per call

    def record(self, ex: Exchange) -> None:
        now = self.clock()
        route = ex.route
        svc = ex.service
        ctx = ex.ctx
        consumer = ctx.consumer if ctx is not None else None
        s: Series | None = None
        if consumer is None:
            if route is self.last_route and svc is self.last_service:  # the same route as the last request
                s = self.last
            else:
                rkey: bytes = route.log_name if route is not None else NO_ROUTE
                skey: bytes = svc.log_name if svc is not None else NO_ROUTE
                s = self.series.get(rkey)
                if s is not None and s.svc_key is not skey and s.svc_key != skey:
                    s = None
                if s is None:
                    s = self._series(rkey, skey, route, svc, None)
                self.last_route = route
                self.last_service = svc
                self.last = s
        if s is None:
            s = self._series(route.log_name if route is not None else NO_ROUTE,
                             svc.log_name if svc is not None else NO_ROUTE, route, svc, consumer)
        status: int = ex.status
        t_up: float = ex.t_up
        code = status if t_up and not ex.error else status + KONG_SOURCE
        if code == s.code:
            s.code_n += 1
        elif s.code_n == 0:
            s.code = code
            s.code_n = 1
        else:
            codes = s.codes
            codes[code] = codes.get(code, 0) + 1
        bytes_in: int = ex.bytes_in
        bytes_out: int = ex.bytes_out
        s.bytes_in += bytes_in
        s.bytes_out += bytes_out
        total = (now - ex.t0) * 1000.0
        if total < 0.0:
            total = 0.0
        s.req.add(total)
        own = total
        if t_up:
            up = (ex.t_up_end - t_up) * 1000.0
            if up < 0.0:
                up = 0.0
            s.up.add(up)
            own = total - up
            if own < 0.0:
                own = 0.0
        s.gw.add(own)
        self.requests += 1
        ip: str = ex.client_ip
        t: Talker | None = None
        if ip is self.last_ip:
            t = self.last_talker
        else:
            t = self.clients.get(ip)
            if t is None:
                t = self._talker(ip)
            self.last_ip = ip
            self.last_talker = t
        t.requests += 1
        t.bytes += bytes_in + bytes_out
        if status >= 400:
            t.errors += 1
        if ex.span is not None:
            tracing = self.tracing
            if tracing is not None:
                tracing.end(ex, now)

    def _series(self, rkey: bytes, skey: bytes, route: Any, svc: Any, consumer: Any) -> Series:
        cname = ""
        if consumer is not None:
            cname = str(consumer.username or consumer.custom_id or consumer.id or "")
        key = (rkey, skey, cname)
        s = self.other.get(key)
        if s is not None:
            return s
        if self.count >= MAX_SERIES:
            s = self.overflow
            if s is None:
                s = Series("_other", "_other", "_other" if cname else "", b"")
                self.overflow = s
            return s
        s = Series(_label(svc), _label(route), cname, skey)
        self.count += 1
        self.other[key] = s
        if not cname and rkey not in self.series:
            self.series[rkey] = s
        return s

    def _talker(self, ip: str) -> Talker:
        clients = self.clients
        if len(clients) >= TALKERS_CAP:
            ranked = sorted(clients.items(), key=_by_requests, reverse=True)
            kept: dict[str, Talker] = {}
            for i, (k, v) in enumerate(ranked):
                if i < TALKERS_KEEP:
                    kept[k] = v
                elif v.requests > self.floor:
                    self.floor = v.requests
            self.clients = clients = kept
            self.last_ip = "\x00"
        t = Talker()
        clients[ip] = t
        return t

    def ratelimit(self, plugin: str, service: str, route: str, decision: str) -> None:
        key = (plugin, service, route, decision)
        cell = self.ratelimits.get(key)
        if cell is None:
            self.ratelimits[key] = [1]
        else:
            cell[0] += 1

    def ratelimit_cell(self, plugin: str, service: str, route: str, decision: str) -> list[int]:
        """The one-element list that counts these decisions: a plugin that keeps it counts with ``cell[0] += 1``,
        no look-up per request (ratelimit.local)."""
        key = (plugin, service, route, decision)
        cell = self.ratelimits.get(key)
        if cell is None:
            cell = self.ratelimits[key] = [0]
        return cell

    def snapshot(self, top: int = 100) -> dict[str, Any]:
        """Everything counted so far (cumulative), as plain data for the supervisor."""
        series = [s.dump() for s in self.other.values()]
        if self.overflow is not None:
            series.append(self.overflow.dump())
        ranked = sorted(self.clients.items(), key=_by_requests, reverse=True)[:top]
        return {
            "requests": self.requests,
            "series": series,
            "clients": [(ip, t.requests, t.bytes, t.errors) for ip, t in ranked],
            "clients_floor": self.floor,
            "ratelimit": [(k[0], k[1], k[2], k[3], v[0]) for k, v in self.ratelimits.items()],
        }


def _by_requests(item: tuple[str, Talker]) -> int:
    return item[1].requests


class Current:
    """The process's recorder (a worker's): the one plugins count into (``metrics.bind`` sets it). A compiled
    module-level constant, so the rate-limit check reads it without a module look-up."""

    def __init__(self) -> None:
        self.rec: Recorder | None = None


CURRENT: Final = Current()
