"""Observability's parts without processes: the recorder on real in-memory exchanges, aggregation and the Prometheus
text, shared-memory regions, the status summary, log formats and redaction, rotation, W3C trace context and spans."""

from __future__ import annotations

import asyncio
import json
import os
import pickle

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gwanmun.config import load_text
from gwanmun.config.compile import compile_runtime
from gwanmun.config.model import GatewayConfig
from gwanmun.errors import ConfigError
from gwanmun.http.downstream import DownstreamProtocol
from gwanmun.observability import logformat, metrics, shm, status, statuscli
from gwanmun.observability.accesslog import AccessLog
from gwanmun.observability.recorder import (
    GATEWAY_BUCKETS,
    LATENCY_BUCKETS,
    GatewayHistogram,
    LatencyHistogram,
    Recorder,
)
from gwanmun.observability.tracing import Tracing, parse_traceparent
from gwanmun.server import Worker
from gwanmun.upstream.connection import UpstreamConnection

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n"
            b"hello world\n")
CONFIG = """_format_version: "3.0"
gateway: {{status_listen: "off"{extra}}}
services:
- {{name: orders, url: "http://127.0.0.1:18081", routes: [{{name: orders-api, paths: ["/orders"]}}]}}
- {{name: users, url: "http://127.0.0.1:18081", routes: [{{name: users-api, paths: ["/users"]}}]}}
"""


class Transport:
    def __init__(self, peer=("127.0.0.1", 50000)):
        self.peer = peer
        self.written: list[bytes] = []

    def write(self, data):
        self.written.append(bytes(data))

    def is_closing(self):
        return False

    def get_extra_info(self, key, default=None):
        return self.peer if key == "peername" else default

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass

    def abort(self):
        pass


class InMemoryGateway:
    """The real downstream protocol, exchange and upstream connection on in-memory transports (bench/inproc.py)."""

    def __init__(self, extra: str = ""):
        if "access_log:" not in extra:
            extra = ', access_log: "off"' + extra
        self.worker = Worker(compile_runtime(load_text(CONFIG.format(extra=extra))), asyncio.get_running_loop())
        self.up_transport = Transport()
        pool = self.worker.pools.get("127.0.0.1", 18081)
        self.conn = UpstreamConnection(pool)
        self.conn.connection_made(self.up_transport)
        pool.idle.append(self.conn)
        self.clients: dict[tuple, DownstreamProtocol] = {}

    def request(self, path: str, headers: dict | None = None, peer=("127.0.0.1", 50000),
                response: bytes | None = RESPONSE) -> bytes:
        down = self.clients.get(peer)
        if down is None:
            down = self.clients[peer] = DownstreamProtocol(self.worker, 8000)
            t = Transport(peer)
            down.connection_made(t)
        t = down.transport
        t.written.clear()
        self.up_transport.written.clear()
        extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items())
        down.data_received(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw.test\r\n" + extra + b"\r\n")
        if response is not None and self.up_transport.written:
            self.conn.data_received(response)
        return b"".join(t.written)

    def upstream_head(self) -> bytes:
        return b"".join(self.up_transport.written)


def in_loop(test):
    """Run a (synchronous) test inside a running event loop, as the protocols expect."""
    import functools

    @functools.wraps(test)
    def run(*args, **kwargs):
        async def main():
            return test(*args, **kwargs)

        return asyncio.run(main())

    return run


# -- the recorder -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,bounds", [(LatencyHistogram, LATENCY_BUCKETS), (GatewayHistogram, GATEWAY_BUCKETS)],
                         ids=["latency", "gateway"])
def test_histogram_classes_use_the_documented_bounds(cls, bounds):
    for i, bound in enumerate(bounds):
        h = cls()
        h.add(bound)  # le: a value equal to a bound is in that bucket
        h.add(bound * 1.0001)
        counts = h.counts()
        assert len(counts) == len(bounds) + 1
        assert counts[i] == 1 and counts[i + 1] == 1 and sum(counts) == 2
    h = cls()
    h.add(0.0)
    h.add(1e9)
    assert h.counts()[0] == 1 and h.counts()[-1] == 1 and h.sum == 1e9


@in_loop
def test_recorder_counts_requests_by_route_status_and_source_with_latency_and_bandwidth():
    gw = InMemoryGateway()
    for _ in range(5):
        assert gw.request("/orders/1").startswith(b"HTTP/1.1 200")
    gw.request("/users/1")
    assert gw.request("/nowhere").startswith(b"HTTP/1.1 404")
    snap = gw.worker.recorder.snapshot()
    assert snap["requests"] == 7
    series = {(s[0], s[1], s[2]): s for s in snap["series"]}
    orders = series[("orders", "orders-api", "")]
    assert orders[3] == {200: 5}  # source "service"
    assert orders[4] > 0 and orders[5] > 0  # bytes in, out
    assert sum(orders[6]) == 5 and sum(orders[8]) == 5 and sum(orders[10]) == 5  # request, upstream, own
    assert series[("users", "users-api", "")][3] == {200: 1}
    assert series[("", "", "")][3] == {1404: 1}  # no route: the gateway answered (source "kong")
    assert snap["clients"][0][:2] == ("127.0.0.1", 7)
    assert snap["clients"][0][3] == 1  # one 4xx


@in_loop
def test_recorder_top_talkers_stay_bounded():
    rec = Recorder()
    from gwanmun.observability import recorder as r

    for i in range(r.TALKERS_CAP * 3):
        rec._talker(f"10.0.{i // 256}.{i % 256}").requests += 1
    assert len(rec.clients) <= r.TALKERS_CAP


@in_loop
def test_ratelimit_api_counts_into_the_bound_recorder():
    gw = InMemoryGateway()
    metrics.bind(gw.worker.recorder)

    class Ctx:
        route = type("R", (), {"name": "orders-api", "id": None})()
        service = type("S", (), {"name": "orders", "id": None})()

    metrics.ratelimit(Ctx(), True)
    metrics.ratelimit(Ctx(), False)
    metrics.ratelimit(Ctx(), "rejected", plugin="rate-limiting-advanced")
    metrics.ratelimit(None, "error")  # no context: empty labels, never raises
    got = {k[:4]: k[4] for k in gw.worker.recorder.snapshot()["ratelimit"]}
    assert got[("rate-limiting", "orders", "orders-api", "allowed")] == 1
    assert got[("rate-limiting", "orders", "orders-api", "rejected")] == 1
    assert got[("rate-limiting-advanced", "orders", "orders-api", "rejected")] == 1
    assert got[("rate-limiting", "", "", "error")] == 1


# -- aggregation, the Prometheus text, the status summary ------------------------------------------------------------


def _snapshot(pid: int, n: int, worker: int) -> dict:
    return {
        "pid": pid, "worker": worker, "started": 0.0, "time": 1.0, "config_hash": "abcdef0123456789",
        "requests": n + 1,
        "series": [("orders", "orders-api", "", {200: n, 1503: 1}, 100 * n, 200 * n,
                    [n] + [0] * len(LATENCY_BUCKETS), 0.1 * n, [n] + [0] * len(LATENCY_BUCKETS), 0.05 * n,
                    [0, n] + [0] * len(GATEWAY_BUCKETS), 0.05 * n),
                   ("orders", "orders-api", "alice", {200: 2}, 10, 20, [2] + [0] * len(LATENCY_BUCKETS), 0.2,
                    [2] + [0] * len(LATENCY_BUCKETS), 0.1, [0, 2] + [0] * len(GATEWAY_BUCKETS), 0.1)],
        "clients": [("10.0.0.1", n, 300 * n, 1)],
        "clients_floor": 0,
        "ratelimit": [("rate-limiting", "orders", "orders-api", "rejected", 3)],
        "connections": {"active": 2, "reading": 1, "waiting": 1},
        "breakers": [("orders", "", "closed")] if worker == 0 else [("orders", "", "open")],
        "health": [("orders.up", "10.0.0.5:80", "10.0.0.5:80", "healthy")],
        "spans": 4,
    }


def _families(text: bytes) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_aggregate_sums_workers_keeps_exited_workers_and_renders_kong_names():
    regions = shm.Regions(2, 1 << 20)
    agg = status.Aggregator(None, regions)
    regions.write(0, pickle.dumps(_snapshot(100, 10, 0)))
    regions.write(1, pickle.dumps(_snapshot(101, 5, 1)))
    fams = _families(metrics.render(agg.collect()))
    req = {(l["service"], l["route"], l["code"], l["source"], l["consumer"]): v
           for l, v in fams["gwanmun_http_requests_total"]}
    assert req[("orders", "orders-api", "200", "service", "")] == 15
    assert req[("orders", "orders-api", "503", "kong", "")] == 2
    assert req[("orders", "orders-api", "200", "service", "alice")] == 4
    bw = {(l["direction"], l["consumer"]): v for l, v in fams["gwanmun_bandwidth_bytes_total"]}
    assert bw[("ingress", "")] == 1500 and bw[("egress", "")] == 3000
    counts = {l["route"]: v for l, v in fams["gwanmun_request_latency_ms_count"]}
    assert counts["orders-api"] == 15 + 4  # histograms are per service/route (consumers summed)
    assert any(l["le"] == "0.25" for l, _ in fams["gwanmun_kong_latency_ms_bucket"])
    assert "gwanmun_upstream_latency_ms_bucket" in fams
    health = {l["state"]: v for l, v in fams["gwanmun_upstream_target_health"]}
    assert health == {"healthy": 2, "unhealthy": 0, "healthchecks_off": 0, "dns_error": 0}
    breakers = {l["state"]: v for l, v in fams["gwanmun_circuit_breaker_state"]}
    assert breakers == {"closed": 1, "open": 1, "half_open": 0}
    assert fams["gwanmun_ratelimit_decisions_total"][0][1] == 6
    assert {l["state"]: v for l, v in fams["gwanmun_connections"]}["active"] == 4
    assert fams["gwanmun_tracing_spans_total"][0][1] == 8

    # worker 0 exits (its last snapshot is kept) and its replacement starts from zero: nothing goes backwards
    agg.on_event("worker_exited", {"worker": 0, "pid": 100, "restart_in_s": 0.0})
    regions.write(0, pickle.dumps(_snapshot(102, 1, 0)))
    fams = _families(metrics.render(agg.collect()))
    req = {(l["code"], l["consumer"]): v for l, v in fams["gwanmun_http_requests_total"]}
    assert req[("200", "")] == 16
    assert fams["gwanmun_worker_restarts_total"][0][1] == 1
    agg.on_event("worker_exited", {"worker": 0, "pid": 100, "restart_in_s": 0.0})  # the same pid twice: once
    assert _families(metrics.render(agg.collect()))["gwanmun_requests_total"][0][1] == 11 + 6 + 2


def test_status_summary_has_rates_percentiles_tables_and_history(monkeypatch):
    regions = shm.Regions(1, 1 << 20)
    agg = status.Aggregator(None, regions)
    clock = [1000.0]
    monkeypatch.setattr(status.time, "monotonic", lambda: clock[0])
    regions.write(0, pickle.dumps(_snapshot(100, 10, 0)))
    first = agg.snapshot()
    assert first["requests"]["rate"] is None and first["requests"]["total"] == 11
    clock[0] += 2.0
    regions.write(0, pickle.dumps(_snapshot(100, 30, 0)))
    s = agg.snapshot()
    assert s["requests"]["rate"] == pytest.approx(10.0)  # 20 more in 2 s
    assert s["requests"]["latency_ms"]["p50"] is not None
    assert s["services"][0]["name"] == "orders" and s["services"][0]["rate"] == pytest.approx(10.0)
    assert s["routes"][0]["name"] == "orders-api"
    assert s["consumers"][0]["name"] == "alice"
    assert s["clients"][0] == {"client": "10.0.0.1", "requests": 30, "bytes": 9000, "errors": 1}
    assert s["upstreams"][0]["health"] == "healthy" and s["breakers"][0]["state"] == "closed"
    assert len(s["history"]) == 1 and s["history"][0][1] == pytest.approx(10.0)
    json.dumps(s)  # plain JSON
    text = statuscli.render(s)
    assert "orders" in text and "10.0 req/s" in text and len(text.splitlines()) <= 40


def test_quantile_interpolates_within_buckets():
    counts = [0, 10, 10] + [0] * (len(LATENCY_BUCKETS) - 2)
    assert status.quantile(0.5, counts) == pytest.approx(0.5)
    assert status.quantile(0.75, counts) == pytest.approx(0.75)
    assert status.quantile(0.99, [0] * len(LATENCY_BUCKETS) + [5]) == LATENCY_BUCKETS[-1]
    assert status.quantile(0.5, [0] * (len(LATENCY_BUCKETS) + 1)) is None


def test_shared_regions_round_trip_and_never_return_half_a_write():
    r = shm.Regions(2, 4096)
    assert r.read(0) is None
    assert r.write(1, b"x" * 100) and r.read(1) == b"x" * 100
    assert not r.write(1, b"y" * 5000)  # too large: refused, the last good one stays
    assert r.read(1) == b"x" * 100
    shm.HEADER.pack_into(r.buf, 0, 3, 10)  # a writer died in the middle (odd sequence)
    assert r.read(0, tries=3) is None
    assert r.write(0, b"ok") and r.read(0) == b"ok"


def test_status_handler_routes():
    status._aggregator = status.Aggregator(None, shm.Regions(1, 4096))
    try:
        code, body, ctype, *_ = status.handle(b"GET /metrics HTTP/1.1\r\nHost: x")
        assert code == 200 and b"gwanmun_node_info" in body and ctype.startswith("text/plain")
        code, body, ctype, *_ = status.handle(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text")
        assert code == 200 and body.rstrip().endswith(b"# EOF") and "openmetrics" in ctype
        code, body, ctype, *_ = status.handle(b"GET /status HTTP/1.1")
        assert code == 200 and json.loads(body)["requests"]["total"] == 0
        code, body, ctype, _, extra = status.handle(b"GET / HTTP/1.1")
        assert code == 200 and b"dashboard.js" in body and ctype.startswith("text/html") and extra
        assert status.handle(b"GET /dashboard/dashboard.js HTTP/1.1")[0] == 200
        assert status.handle(b"GET /dashboard/../status.py HTTP/1.1")[0] == 404
        assert status.handle(b"POST /metrics HTTP/1.1")[0] == 405
        assert status.handle(b"GET /status/ready HTTP/1.1")[0] == 503  # no workers
    finally:
        status._aggregator = None


# -- logs: formats, redaction, rotation, the error log ---------------------------------------------------------------


def test_log_templates_and_fields_are_checked():
    assert logformat.check_format("json") == "json"
    assert logformat.check_format("combined") == "combined"
    assert logformat.check_format("$remote_addr ${status} $http_x_trace")
    for bad in ("$nope", "no variables at all"):
        with pytest.raises(ValueError):
            logformat.check_format(bad)
    with pytest.raises(ConfigError) as e:
        load_text('_format_version: "3.0"\ngateway: {access_log_fields: [status, nope]}\n')
    assert "unknown log variable 'nope'" in str(e.value)


def test_redaction_of_headers_and_query_arguments():
    r = logformat.Redactor()
    fields = [(b"Authorization", b"Bearer secret"), (b"Cookie", b"s=1"), (b"User-Agent", b"curl")]
    assert r.header(fields, b"authorization") == "[REDACTED]"
    assert r.header(fields, b"cookie") == "[REDACTED]"
    assert r.header(fields, b"user-agent") == "curl"
    assert r.query("a=1&apikey=s3cr3t&Token=x&b=2") == "a=1&apikey=[REDACTED]&Token=[REDACTED]&b=2"
    assert r.query("api%5Fkey=z") == "api%5Fkey=[REDACTED]"
    assert "s3cr3t" not in json.dumps(r.headers_dict([(b"X-API-Key", b"s3cr3t")]))


@in_loop
def test_access_log_template_and_custom_json_fields(tmp_path):
    path = tmp_path / "access.log"
    gw = InMemoryGateway(f', access_log: "{path}", access_log_format: \'$remote_addr "$request" $status '
                         f'$http_authorization $consumer $upstream_addr\'')
    gw.request("/orders/1?apikey=s3cr3t&page=2", {"Authorization": "Basic c2VjcmV0"})
    gw.worker.access_log.flush()
    line = path.read_text()
    assert line == '127.0.0.1 "GET /orders/1?apikey=[REDACTED]&page=2 HTTP/1.1" 200 [REDACTED] - 127.0.0.1:18081\n'

    path2 = tmp_path / "access.json"
    gw = InMemoryGateway(f', access_log: "{path2}", access_log_fields: [request_id, status, route, args, '
                         f'http_user_agent, trace_id]')
    gw.request("/orders/1?token=abc", {"User-Agent": "tests"})
    gw.worker.access_log.flush()
    rec = json.loads(path2.read_text())
    assert list(rec) == ["request_id", "status", "route", "args", "http_user_agent", "trace_id"]
    assert rec["args"] == "token=[REDACTED]" and rec["http_user_agent"] == "tests" and rec["trace_id"] is None


@in_loop
def test_access_log_rotates_by_size_and_follows_a_renamed_file(tmp_path):
    path = tmp_path / "access.log"
    gw = GatewayConfig.model_validate({"access_log": str(path), "access_log_rotate": {"max_size": "4k", "keep": 2}})
    log = AccessLog(str(path), None, gw)
    line = b"x" * 1023 + b"\n"
    for round_ in range(3):
        for _ in range(5):
            log._append_line(line)
        log._next_check = 0.0
        log.flush()
        log._next_check = 0.0
        log.flush()  # the check runs after a write: the second flush finds the file too big
    assert (tmp_path / "access.log.1").exists() and (tmp_path / "access.log.2").exists()
    assert not (tmp_path / "access.log.3").exists()
    # renamed by someone else (logrotate): the log follows the name within a check
    os.rename(path, tmp_path / "moved.log")
    log._next_check = 0.0
    log._append_line(b"after\n")
    log.flush()
    log._next_check = 0.0
    log._append_line(b"again\n")
    log.flush()
    assert path.read_bytes() == b"again\n"
    log.close()


@in_loop
def test_upstream_failure_is_logged_with_its_reason_and_request_fields(caplog):
    gw = InMemoryGateway()
    caplog.set_level("WARNING", logger="gwanmun.proxy")
    gw.request("/orders/1", response=b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")  # an invalid response
    records = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "upstream_failed"]
    assert records, caplog.text
    f = records[0].fields
    assert f["status"] == 502 and f["service"] == "orders" and f["route"] == "orders-api"
    assert f["upstream"] == "127.0.0.1:18081" and "invalid response" in f["reason"] and f["request_id"]


# -- tracing ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1)),
    (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00",
     (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 0)),
    (b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", (0x4bf92f3577b34da6a3ce929d0e0e4736,
                                                                        0x00f067aa0ba902b7, 1)),
    (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    (b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", None),
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", None),
    (b"garbage", None),
], ids=["sampled", "upper-case", "future-version", "zero-trace", "zero-span", "version-ff", "not-hex",
        "v00-extra", "garbage"])
def test_traceparent_parsing(value, expected):
    assert parse_traceparent(value) == expected


def _tracing(ratio: float, parent_based: bool = True):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gwanmun.config.model import TracingSettings

    exporter = InMemorySpanExporter()
    settings = TracingSettings(endpoint="http://127.0.0.1:1/v1/traces", sampling_ratio=ratio,
                               parent_based=parent_based, flush_interval=0.01)
    return Tracing(settings, 0, exporter), exporter


@in_loop
def test_tracing_continues_the_clients_trace_and_records_one_span():
    gw = InMemoryGateway()
    tracing, exporter = _tracing(0.0)
    gw.worker.tracing = gw.worker.recorder.tracing = tracing
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    gw.request("/orders/1", {"traceparent": parent, "tracestate": "vendor=1"})
    head = gw.upstream_head()
    assert head.count(b"traceparent:") == 1 and head.count(b"tracestate: vendor=1") == 1
    sent = parse_traceparent(head.split(b"traceparent: ")[1].split(b"\r\n")[0])
    assert sent[0] == 0x4bf92f3577b34da6a3ce929d0e0e4736 and sent[1] != 0x00f067aa0ba902b7 and sent[2] == 1
    tracing.force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == sent[0] and span.context.span_id == sent[1]
    assert span.parent.span_id == 0x00f067aa0ba902b7 and span.parent.is_remote
    a = span.attributes
    assert a["gwanmun.route"] == "orders-api" and a["gwanmun.service"] == "orders"
    assert a["gwanmun.upstream"] == "127.0.0.1:18081" and a["http.response.status_code"] == 200
    assert span.name == "GET orders-api" and span.end_time >= span.start_time
    tracing.shutdown()


@in_loop
def test_tracing_samples_by_ratio_and_follows_an_unsampled_parent():
    gw = InMemoryGateway()
    tracing, exporter = _tracing(1.0)
    gw.worker.tracing = gw.worker.recorder.tracing = tracing
    gw.request("/orders/1")  # no parent, ratio 1: a root span, and a traceparent upstream
    head = gw.upstream_head()
    assert b"traceparent: 00-" in head
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    gw.request("/orders/1", {"traceparent": unsampled})  # the parent says no: forwarded unchanged, no span
    assert gw.upstream_head().count(unsampled.encode()) == 1
    tracing.force_flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 and spans[0].parent is None
    tracing.shutdown()
    off, exporter = _tracing(0.0)
    gw.worker.tracing = gw.worker.recorder.tracing = off
    gw.request("/orders/1")
    assert b"traceparent" not in gw.upstream_head()
    off.force_flush()
    assert not exporter.get_finished_spans()
    off.shutdown()


def test_tracing_config_validation():
    with pytest.raises(ConfigError):
        load_text('_format_version: "3.0"\ngateway: {tracing: {endpoint: "ftp://x"}}\n')
    with pytest.raises(ConfigError):
        load_text('_format_version: "3.0"\ngateway: {tracing: {endpoint: "http://x:4318/v1/traces", '
                  'sampling_ratio: 2}}\n')
    gw = load_text('_format_version: "3.0"\ngateway: {status_listen: off, tracing: {endpoint: '
                   '"http://127.0.0.1:4318/v1/traces"}}\n').config.gateway
    assert gw.status_listen == "off" and gw.tracing.sampling_ratio == 0.01
