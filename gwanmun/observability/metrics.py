"""Prometheus metrics: the names, and the text rendered from every worker's counters (``status.Aggregate``).

Names follow Kong's prometheus plugin (``kong/plugins/prometheus/exporter.lua``) with the ``gwanmun_`` prefix in
place of ``kong_``; docs/observability.md lists every metric with its labels. Counting happens in each worker
(``recorder``, about 0.2 µs per request, no locks); rendering happens in the supervisor when ``/metrics`` is
scraped, with prometheus-client's exposition code (``generate_latest``), so the text format and its escaping are the
library's.

**For plugins.** Rate-limiting plugins report each decision with::

    from gwanmun.observability import metrics
    metrics.ratelimit(ctx, "allowed")          # or "rejected"; or True / False
    metrics.ratelimit(ctx, "error", plugin="rate-limiting")   # the store failed and the request went through

``ctx`` is the request's ``plugins.base.Ctx`` (its route and service become labels). This counts into
``gwanmun_ratelimit_decisions_total{plugin, service, route, decision}``; it costs a dictionary update and never
raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .recorder import CURRENT, GATEWAY_BUCKETS, KONG_SOURCE, LATENCY_BUCKETS, Recorder

if TYPE_CHECKING:
    from .status import Aggregate

PREFIX = "gwanmun_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

def bind(recorder: Recorder) -> None:
    """The process's recorder (a worker's), which ``ratelimit`` counts into."""
    CURRENT.rec = recorder


def _name(entity: Any) -> str:
    if entity is None:
        return ""
    return str(getattr(entity, "name", None) or getattr(entity, "id", None) or "")


def ratelimit(ctx: Any, decision: str | bool, plugin: str = "rate-limiting") -> None:
    """Count one rate-limit decision (see the module's doc)."""
    rec = CURRENT.rec
    if rec is None:
        return
    if decision is True:
        decision = "allowed"
    elif decision is False:
        decision = "rejected"
    try:
        rec.ratelimit(plugin, _name(getattr(ctx, "service", None)), _name(getattr(ctx, "route", None)),
                      str(decision))
    except Exception:  # noqa: BLE001 - counting must never fail a request
        pass


# ---------------------------------------------------------------------------------------------------------------------
# rendering (in the supervisor)
# ---------------------------------------------------------------------------------------------------------------------
def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{int(bound)}.0"


def _buckets(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    out = []
    acc = 0
    for bound, n in zip(bounds, counts):
        acc += n
        out.append((_le(bound), acc))
    acc += counts[len(bounds)]
    out.append(("+Inf", acc))
    return out


def families(agg: Aggregate) -> Iterable[Any]:
    """The metric families of an aggregate of every worker (prometheus_client ``Metric`` objects)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    from .. import __version__

    p = PREFIX
    info = GaugeMetricFamily(p + "node_info", "gwanmun node metadata", labels=["version", "pid"])
    info.add_metric([__version__, str(agg.pid)], 1)
    yield info

    requests = CounterMetricFamily(p + "http_requests", "HTTP status codes per consumer/service/route",
                                   labels=["service", "route", "code", "source", "consumer"])
    bandwidth = CounterMetricFamily(p + "bandwidth_bytes", "Total bandwidth (ingress/egress) throughput in bytes",
                                    labels=["service", "route", "direction", "consumer"])
    latency: dict[tuple[str, str], list] = {}  # (service, route) -> [req, req_sum, up, up_sum, gw, gw_sum, up_count]
    for key, s in agg.series.items():
        service, route, consumer = key
        for code, n in s.codes.items():
            source = "kong" if code >= KONG_SOURCE else "service"
            requests.add_metric([service, route, str(code % KONG_SOURCE), source, consumer], n)
        if s.bytes_in:
            bandwidth.add_metric([service, route, "ingress", consumer], s.bytes_in)
        if s.bytes_out:
            bandwidth.add_metric([service, route, "egress", consumer], s.bytes_out)
        acc = latency.get((service, route))
        if acc is None:
            acc = latency[(service, route)] = [list(s.req), s.req_sum, list(s.up), s.up_sum, list(s.gw), s.gw_sum]
        else:
            for i, n in enumerate(s.req):
                acc[0][i] += n
            acc[1] += s.req_sum
            for i, n in enumerate(s.up):
                acc[2][i] += n
            acc[3] += s.up_sum
            for i, n in enumerate(s.gw):
                acc[4][i] += n
            acc[5] += s.gw_sum
    yield requests
    yield bandwidth

    total = HistogramMetricFamily(p + "request_latency_ms", "Total latency incurred during requests for each "
                                  "service/route", labels=["service", "route"])
    upstream = HistogramMetricFamily(p + "upstream_latency_ms", "Latency added by upstream response for each "
                                     "service/route", labels=["service", "route"])
    own = HistogramMetricFamily(p + "kong_latency_ms", "Latency added by the gateway itself (Kong's name: "
                                "kong_latency_ms) for each service/route", labels=["service", "route"])
    for (service, route), acc in latency.items():
        total.add_metric([service, route], _buckets(acc[0], LATENCY_BUCKETS), acc[1])
        if sum(acc[2]):
            upstream.add_metric([service, route], _buckets(acc[2], LATENCY_BUCKETS), acc[3])
        own.add_metric([service, route], _buckets(acc[4], GATEWAY_BUCKETS), acc[5])
    yield total
    yield upstream
    yield own

    all_requests = CounterMetricFamily(p + "requests", "Requests completed by every worker", labels=[])
    all_requests.add_metric([], agg.requests)
    yield all_requests

    health = GaugeMetricFamily(p + "upstream_target_health", "Health of each upstream target: for each state "
                               "(healthchecks_off, healthy, unhealthy, dns_error), how many workers see the target "
                               "in it (each worker checks on its own; with one worker, Kong's 0/1)",
                               labels=["upstream", "target", "address", "state", "subsystem"])
    for (up, target, address), states in agg.health.items():
        for state in ("healthchecks_off", "healthy", "unhealthy", "dns_error"):
            health.add_metric([up, target, address, state, "http"], states.get(state, 0))
    yield health

    breakers = GaugeMetricFamily(p + "circuit_breaker_state", "Circuit-breaker state: for each state (closed, "
                                 "open, half_open), how many workers' breaker is in it (breakers are per worker)",
                                 labels=["service", "target", "state"])
    for (service, target), states in agg.breakers.items():
        for state in ("closed", "open", "half_open"):
            breakers.add_metric([service, target, state], states.get(state, 0))
    yield breakers

    rl = CounterMetricFamily(p + "ratelimit_decisions", "Rate-limit decisions by plugin, service, route and "
                             "decision (allowed, rejected, error)", labels=["plugin", "service", "route", "decision"])
    for key, n in agg.ratelimit.items():
        rl.add_metric(list(key), n)
    yield rl

    cfg = GaugeMetricFamily(p + "config_info", "The config the supervisor serves (its hash); 1",
                            labels=["config_hash"])
    cfg.add_metric([agg.config_hash], 1)
    yield cfg
    wcfg = GaugeMetricFamily(p + "worker_config_info", "The config each worker serves (its hash); 1",
                             labels=["worker", "config_hash"])
    for w in agg.workers:
        if w.get("config_hash"):
            wcfg.add_metric([str(w["worker"]), w["config_hash"]], 1)
    yield wcfg
    gen = GaugeMetricFamily(p + "config_generation", "Reloads sent to the workers since start")
    gen.add_metric([], agg.generation)
    yield gen
    reloads = CounterMetricFamily(p + "config_reloads", "Config reloads by result (reloaded, unchanged, rejected)",
                                  labels=["result"])
    for result in ("reloaded", "unchanged", "rejected"):
        reloads.add_metric([result], agg.reloads.get(result, 0))
    yield reloads
    if agg.last_reload:
        last = GaugeMetricFamily(p + "config_last_reload_timestamp_seconds", "When the config was last reloaded")
        last.add_metric([], agg.last_reload)
        yield last

    conns = GaugeMetricFamily(p + "connections", "Client connections by state (active = reading + waiting; "
                              "waiting: idle keep-alive)", labels=["state"])
    for state in ("active", "reading", "waiting"):
        conns.add_metric([state], agg.connections.get(state, 0))
    yield conns
    workers = GaugeMetricFamily(p + "workers", "Worker processes running")
    workers.add_metric([], len([w for w in agg.workers if w.get("alive")]))
    yield workers
    restarts = CounterMetricFamily(p + "worker_restarts", "Worker processes restarted after an unexpected exit")
    restarts.add_metric([], agg.restarts)
    yield restarts
    spans = CounterMetricFamily(p + "tracing_spans", "Spans recorded (tracing on, sampled requests)")
    spans.add_metric([], agg.spans)
    yield spans


class _Collector:
    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg

    def collect(self) -> Iterable[Any]:
        return families(self.agg)


def render(agg: Aggregate, openmetrics: bool = False) -> bytes:
    """The Prometheus text exposition (or OpenMetrics) of ``agg``."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(agg))  # type: ignore[arg-type]
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as om_latest

        return om_latest(registry)
    from prometheus_client import generate_latest

    return generate_latest(registry)
