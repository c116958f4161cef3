"""Observability on the real gateway (2 workers): /metrics summed over workers, /status, worker restarts, reloads,
upstream-failure reasons in the error log, access-log templates with redaction and rotation, OpenTelemetry traces
exported to a real OTLP/HTTP receiver, and ``gwanmun status``."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.gateway import REPO_ROOT, service, single_service
from tests.fixtures.rawhttp import wait_for

pytestmark = pytest.mark.timeout(60)


def get(url: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def scrape(gw) -> dict[str, list[tuple[dict, float]]]:
    status, body, headers = get(gw.status_url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples, **labels) -> float:
    return sum(v for l, v in samples if all(l.get(k) == want for k, want in labels.items()))


def wait_metric(gw, name: str, want: float, timeout: float = 10.0, **labels) -> dict:
    """Scrape until metric ``name`` (summed over samples matching ``labels``) reaches ``want``."""
    last = {}

    def check():
        nonlocal last
        last = scrape(gw)
        return last if total(last.get(name, []), **labels) >= want else None

    try:
        return wait_for(check, timeout, 0.1, f"{name}{labels} >= {want}")
    except AssertionError:
        raise AssertionError(f"{name}{labels}: {last.get(name)}") from None


def two_services(httpbin, **gateway) -> dict:
    return {
        "gateway": {"workers": 2, **gateway},
        "services": [
            service("orders", httpbin.url, [{"name": "orders-api", "paths": ["/orders"], "strip_path": True}]),
            service("users", httpbin.url, [{"name": "users-api", "paths": ["/users"], "strip_path": True}]),
        ],
    }


def test_metrics_are_summed_over_workers_with_kong_names(gateway, httpbin):
    gw = gateway(two_services(httpbin), workers=2)
    assert len(gw.worker_pids()) == 2
    n = 40
    for i in range(n):  # a new connection each: the kernel spreads them over both workers
        assert gw.request("GET", "/orders/get").status == 200
    for i in range(3):
        assert gw.request("GET", "/users/status/503").status == 503
    assert gw.request("GET", "/nowhere").status == 404
    m = wait_metric(gw, "gwanmun_http_requests_total", n, service="orders", code="200")
    req = m["gwanmun_http_requests_total"]
    assert total(req, service="orders", route="orders-api", code="200", source="service", consumer="") == n
    m = wait_metric(gw, "gwanmun_http_requests_total", 3, service="users", code="503")
    assert total(m["gwanmun_http_requests_total"], code="404", source="kong") == 1
    assert total(m["gwanmun_request_latency_ms_count"], service="orders", route="orders-api") == n
    assert total(m["gwanmun_upstream_latency_ms_count"], service="orders") == n
    assert total(m["gwanmun_kong_latency_ms_count"], service="orders") == n
    assert total(m["gwanmun_bandwidth_bytes_total"], service="orders", direction="egress") > n * 100
    assert total(m["gwanmun_bandwidth_bytes_total"], service="orders", direction="ingress") > n * 30
    assert total(m["gwanmun_requests_total"]) == n + 4
    # both workers served, and both serve the running config
    per_worker = json.loads(get(gw.status_url + "/status")[1])["workers"]
    assert len(per_worker) == 2 and all(w["requests"] > 0 for w in per_worker), per_worker
    hashes = {l["config_hash"] for l, _ in m["gwanmun_worker_config_info"]}
    assert hashes == {l["config_hash"] for l, _ in m["gwanmun_config_info"]} and len(m["gwanmun_worker_config_info"]) == 2
    assert total(m["gwanmun_workers"]) == 2 and total(m["gwanmun_worker_restarts_total"]) == 0
    assert {l["state"] for l, _ in m["gwanmun_connections"]} == {"active", "reading", "waiting"}
    assert get(gw.status_url + "/status/ready")[0] == 200


def test_status_summary_and_gwanmun_status(gateway, httpbin):
    gw = gateway(two_services(httpbin), workers=2)
    get(gw.status_url + "/status")  # a first sample, for the rates
    for _ in range(20):
        gw.request("GET", "/orders/get")
    gw.request("GET", "/users/status/500")

    def summary():
        s = json.loads(get(gw.status_url + "/status")[1])
        return s if s["requests"]["total"] >= 21 and s["requests"]["rate"] else None

    s = wait_for(summary, 10, 0.3, "status with 21 requests and a rate")
    assert s["requests"]["latency_ms"]["p50"] is not None and s["requests"]["latency_ms"]["p99"] is not None
    services = {r["name"]: r for r in s["services"]}
    assert services["orders"]["requests"] == 20 and services["users"]["errors_5xx"] == 1
    assert s["clients"][0]["client"] == "127.0.0.1" and s["clients"][0]["requests"] >= 21
    assert s["config"]["hash"] and s["workers_running"] == 2
    out = subprocess.run([sys.executable, "-m", "gwanmun", "status", "--url", gw.status_url], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=20,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "workers 2/2" in text and "orders" in text and "top clients:" in text and "127.0.0.1" in text
    assert len(text.splitlines()) <= 40
    bad = subprocess.run([sys.executable, "-m", "gwanmun", "status", "--url", "127.0.0.1:9"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=20, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert bad.returncode == 1 and "cannot read" in bad.stderr


def test_counts_survive_a_worker_crash_and_restarts_are_counted(gateway, httpbin):
    gw = gateway(two_services(httpbin), workers=2)
    for _ in range(30):
        gw.request("GET", "/orders/get")
    wait_metric(gw, "gwanmun_http_requests_total", 30, service="orders")
    time.sleep(1.2)  # a publish interval: each worker's region holds its final count
    victim = gw.worker_pids()[0]
    mark = gw.mark()
    os.kill(victim, signal.SIGKILL)
    gw.wait_event("worker_started", after=mark, timeout=15)
    m = wait_metric(gw, "gwanmun_worker_restarts_total", 1)
    assert total(m["gwanmun_http_requests_total"], service="orders") == 30  # nothing lost, nothing twice
    for _ in range(5):
        gw.request("GET", "/orders/get")
    wait_metric(gw, "gwanmun_http_requests_total", 35, service="orders")


def test_reloads_and_config_version_are_reported(gateway, httpbin):
    gw = gateway(two_services(httpbin), workers=2)
    before = json.loads(get(gw.status_url + "/status")[1])["config"]
    cfg = two_services(httpbin)
    cfg["services"][0]["read_timeout"] = 30000
    assert gw.reload(cfg)["event"] == "config_reloaded"

    def changed():
        c = json.loads(get(gw.status_url + "/status")[1])["config"]
        return c if c["hash"] != before["hash"] and all(w["config_hash"] == c["hash"] for w in c["workers"]) else None

    after = wait_for(changed, 10, 0.2, "workers on the new config")
    assert after["reloads"]["reloaded"] == 1 and after["generation"] == before["generation"] + 1
    assert gw.reload()["event"] == "config_unchanged"
    m = wait_metric(gw, "gwanmun_config_reloads_total", 1, result="unchanged")
    assert total(m["gwanmun_config_reloads_total"], result="reloaded") == 1


def test_target_health_and_circuit_breaker_states(gateway, httpbin, refusing_port):
    cfg = {
        "gateway": {"workers": 2},
        "upstreams": [{"name": "pool", "targets": [{"target": httpbin.hostport}, {"target": f"127.0.0.1:{refusing_port.port}"}],
                       "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}}],
        "services": [service("pooled", "http://pool", [{"name": "pooled", "paths": ["/pooled"]}],
                             circuit_breaker={"minimum_number_of_calls": 100, "sliding_window_size": 100})],
    }
    gw = gateway(cfg, workers=2)
    m = wait_metric(gw, "gwanmun_upstream_target_health", 2, upstream="pool", state="healthy")
    assert total(m["gwanmun_upstream_target_health"], upstream="pool", state="healthy") == 4  # 2 targets x 2 workers
    assert total(m["gwanmun_circuit_breaker_state"], service="pooled", state="closed") == 2
    for _ in range(12):  # the refusing target fails a try in some worker: passive checks mark it unhealthy there
        gw.request("GET", "/pooled/get")
    m = wait_metric(gw, "gwanmun_upstream_target_health", 1, upstream="pool", state="unhealthy",
                    target=f"127.0.0.1:{refusing_port.port}")
    s = json.loads(get(gw.status_url + "/status")[1])
    bad = [u for u in s["upstreams"] if u["target"].endswith(str(refusing_port.port))]
    assert bad and bad[0]["health"] in ("unhealthy", "mixed")


def test_upstream_failures_are_logged_with_their_reason(gateway, refusing_port):
    gw = gateway(single_service(refusing_port.url, name="down", route_name="down-api", retries=0))
    r = gw.request("GET", "/x")
    assert r.status == 502
    rid = r.header("x-request-id")
    ev = gw.wait_event("upstream_failed", pred=lambda e: e.get("request_id") == rid)
    assert ev["level"] == "warning" and ev["status"] == 502
    assert ev["service"] == "down" and ev["route"] == "down-api"
    assert ev["upstream"] == f"127.0.0.1:{refusing_port.port}"
    assert "connect to" in ev["reason"] and "refused" in ev["reason"].lower()
    assert gw.log_for(rid)["error"] == ev["reason"]  # the access log line names the same reason


def test_access_log_template_redacts_secrets(gateway, httpbin, tmp_path):
    log = tmp_path / "custom.log"
    fmt = '$remote_addr "$request" $status $http_authorization $http_cookie $http_x_api_key $http_x_tag'
    gw = gateway(single_service(httpbin.url, gateway={"access_log": str(log), "access_log_format": fmt}))
    r = gw.request("GET", "/get?apikey=s3cr3t&page=2&access_token=t0k3n",
                   headers={"Authorization": "Bearer hunter2", "Cookie": "session=abc", "X-API-Key": "k3y",
                            "X-Tag": "visible"})
    assert r.status == 200
    line = wait_for(lambda: log.exists() and log.read_text().strip(), 5, 0.05, "a log line")
    assert line == ('127.0.0.1 "GET /get?apikey=[REDACTED]&page=2&access_token=[REDACTED] HTTP/1.1" 200 '
                    '[REDACTED] [REDACTED] [REDACTED] visible')
    for secret in ("s3cr3t", "t0k3n", "hunter2", "session=abc", "k3y"):
        assert secret not in line


def test_access_log_rotates_by_size_across_workers(gateway, httpbin, tmp_path):
    log = tmp_path / "rot.log"
    gw = gateway(single_service(httpbin.url, gateway={"access_log": str(log), "workers": 2,
                                                      "access_log_rotate": {"max_size": 4096, "keep": 2}}),
                 workers=2)
    deadline = time.monotonic() + 20
    while not (tmp_path / "rot.log.2").exists() and time.monotonic() < deadline:
        for _ in range(20):
            gw.request("GET", "/get")
        time.sleep(0.3)
    assert (tmp_path / "rot.log.1").exists() and (tmp_path / "rot.log.2").exists()
    assert not (tmp_path / "rot.log.3").exists()
    ev = gw.wait_event("access_log_rotated")
    assert ev["file"] == str(log)
    for name in ("rot.log.1", "rot.log.2"):  # whole JSON lines in every file
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.pb = trace_service_pb2
        self.spans: list = []
        self.resources: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = receiver.pb.ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    for rs in req.resource_spans:
                        receiver.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                        for ss in rs.scope_spans:
                            receiver.spans.extend(ss.spans)
                out = receiver.pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def otlp():
    r = OtlpReceiver()
    yield r
    r.stop()


def _attrs(span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_traces_are_exported_to_an_otlp_receiver_with_w3c_context(gateway, httpbin, otlp):
    cfg = single_service(httpbin.url, name="traced", route_name="traced-api", gateway={
        "workers": 2, "tracing": {"endpoint": otlp.endpoint, "sampling_ratio": 1.0, "flush_interval": 0.1,
                                  "resource_attributes": {"deployment.environment": "test"}}})
    gw = gateway(cfg, workers=2)
    parent_trace, parent_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = gw.request("GET", "/headers", headers={"traceparent": f"00-{parent_trace}-{parent_span}-01",
                                               "tracestate": "vendor=abc"})
    assert r.status == 200
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    sent = seen["traceparent"].split("-")
    assert sent[0] == "00" and sent[1] == parent_trace and sent[2] != parent_span and sent[3] == "01"
    assert seen["tracestate"] == "vendor=abc"
    r2 = gw.request("GET", "/status/502")  # no parent: a new trace, an error span
    assert r2.status == 502

    def two_spans():
        with otlp.lock:
            return list(otlp.spans) if len(otlp.spans) >= 2 else None

    spans = wait_for(two_spans, 15, 0.1, "two spans at the OTLP receiver")
    by_trace = {s.trace_id.hex(): s for s in spans}
    child = by_trace[parent_trace]
    assert child.span_id.hex() == sent[2] and child.parent_span_id.hex() == parent_span
    assert child.kind == child.SPAN_KIND_SERVER and child.trace_state == "vendor=abc"
    a = _attrs(child)
    assert a["gwanmun.route"] == "traced-api" and a["gwanmun.service"] == "traced"
    assert a["gwanmun.upstream"] == httpbin.hostport and a["http.response.status_code"] == 200
    assert a["http.request.method"] == "GET" and a["url.path"] == "/headers" and a["gwanmun.request_id"]
    assert child.end_time_unix_nano > child.start_time_unix_nano
    root = next(s for s in spans if s.trace_id.hex() != parent_trace)
    assert not root.parent_span_id and _attrs(root)["http.response.status_code"] == 502
    assert root.status.code == root.status.STATUS_CODE_ERROR
    assert otlp.resources[0]["service.name"] == "gwanmun"
    assert otlp.resources[0]["deployment.environment"] == "test"
    wait_metric(gw, "gwanmun_tracing_spans_total", 2)


def test_tracing_sampling_ratio_zero_sends_nothing_and_leaves_headers(gateway, httpbin, otlp):
    cfg = single_service(httpbin.url, gateway={"tracing": {"endpoint": otlp.endpoint, "sampling_ratio": 0.0,
                                                           "flush_interval": 0.1}})
    gw = gateway(cfg)
    r = gw.request("GET", "/headers")
    assert "traceparent" not in {k.lower() for k in r.json()["headers"]}
    unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    r = gw.request("GET", "/headers", headers={"traceparent": unsampled})
    assert {k.lower(): v for k, v in r.json()["headers"].items()}["traceparent"] == unsampled
    time.sleep(0.5)
    assert not otlp.spans


def test_rate_limit_decisions_are_counted(gateway, httpbin):
    gw = gateway({"services": [service("orders", httpbin.url, [{
        "name": "orders-api", "paths": ["/orders"], "strip_path": True,
        "plugins": [{"name": "rate-limiting", "config": {"hour": 3, "policy": "local", "algorithm": "fixed"}}],
    }])]})
    statuses = [gw.request("GET", "/orders/get").status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    m = wait_metric(gw, "gwanmun_ratelimit_decisions_total", 2, decision="rejected")
    decisions = m["gwanmun_ratelimit_decisions_total"]
    assert total(decisions, plugin="rate-limiting", service="orders", route="orders-api", decision="allowed") == 3
    assert total(decisions, decision="rejected") == 2
