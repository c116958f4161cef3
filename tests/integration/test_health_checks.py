"""Upstream health checks with the real gateway: targets that fail active checks stop getting traffic and come back
when healthy; passive failures mark a target down; every target down gives a 503 JSON; ``gwanmun health``."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.gateway import REPO_ROOT, route, service


class Flip:
    """An HTTP upstream on 127.0.0.1 whose behaviour a test flips: ``ok`` (200), ``fail`` (500), ``hang`` (never
    answers in time), ``refuse`` (nothing listens on the port). Counts proxied requests and probes apart."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.hits = 0
        self.probes = 0
        self.port = 0
        self.srv: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._listen()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _listen(self) -> None:
        flip = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: "refuse" really refuses everything

            def do_GET(self) -> None:
                with flip._lock:
                    if self.path.startswith("/health"):
                        flip.probes += 1
                    else:
                        flip.hits += 1
                mode = flip.mode
                if mode == "hang":
                    time.sleep(2)
                status = 500 if mode == "fail" else 200
                body = f"{flip.name}:{mode}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        srv.daemon_threads = True
        self.port = srv.server_address[1]
        self.srv = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def set(self, mode: str) -> None:
        if mode == "refuse" and self.srv is not None:
            self.srv.shutdown()
            self.srv.server_close()
            self.srv = None
        elif mode != "refuse" and self.srv is None:
            self._listen()
        self.mode = mode

    def stop(self) -> None:
        self.set("refuse")


@pytest.fixture
def flips():
    a, b = Flip("a"), Flip("b")
    yield a, b
    a.stop()
    b.stop()


ACTIVE = {
    "active": {
        "http_path": "/health",
        "timeout": 0.3,
        "healthy": {"interval": 0.1, "successes": 2},
        "unhealthy": {"interval": 0.1, "http_failures": 2, "tcp_failures": 2, "timeouts": 2},
    }
}


def _cfg(a: Flip, b: Flip, healthchecks: dict, tags: list | None = None) -> dict:
    return {
        "services": [service("balanced", "http://pool", [route("r", ["/"], strip_path=False)], read_timeout=1000,
                             connect_timeout=500, retries=0)],
        "upstreams": [{"name": "pool", "healthchecks": healthchecks, "tags": tags or [],
                       "targets": [{"target": a.hostport}, {"target": b.hostport}]}],
    }


def health_of(gw) -> dict[str, str]:
    """target -> health, from the worker's status file."""
    out: dict[str, str] = {}
    for path in glob.glob(f"{gw.pid_file}.health.*.json"):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        for t in data["upstreams"].get("pool", {}).get("targets", []):
            out[t["target"]] = t["health"]
    return out


def wait_health(gw, target: Flip, want: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_of(gw).get(target.hostport) == want:
            return
        time.sleep(0.02)
    raise AssertionError(f"{target.hostport} not {want} after {timeout}s: {health_of(gw)}")


def hit(gw, n: int) -> list:
    return [gw.request("GET", f"/x{i}") for i in range(n)]


def test_failing_active_checks_take_a_target_out_and_it_returns(gateway, flips) -> None:
    a, b = flips
    gw = gateway(_cfg(a, b, ACTIVE))
    wait_health(gw, b, "healthy")
    rs = hit(gw, 10)
    assert all(r.status == 200 for r in rs) and a.hits == 5 and b.hits == 5

    b.set("fail")  # 500 to everything: two failed probes take it out
    wait_health(gw, b, "unhealthy")
    before = b.hits
    rs = hit(gw, 10)
    assert [r.status for r in rs] == [200] * 10 and b.hits == before

    b.set("ok")  # two good probes bring it back
    wait_health(gw, b, "healthy")
    before_a, before_b = a.hits, b.hits
    rs = hit(gw, 10)
    assert all(r.status == 200 for r in rs) and b.hits - before_b == 5 and a.hits - before_a == 5

    b.set("refuse")  # connection refused: tcp_failures
    wait_health(gw, b, "unhealthy")
    b.set("hang")  # back, but too slow: the unhealthy probes time out, it stays out
    time.sleep(0.5)
    assert health_of(gw)[b.hostport] == "unhealthy"
    b.set("ok")
    wait_health(gw, b, "healthy")


def test_timeouts_take_a_target_out(gateway, flips) -> None:
    a, b = flips
    gw = gateway(_cfg(a, b, ACTIVE))
    b.set("hang")
    wait_health(gw, b, "unhealthy")
    t0 = time.monotonic()
    rs = hit(gw, 4)
    assert all(r.status == 200 for r in rs) and time.monotonic() - t0 < 1.5


def test_every_target_down_gives_503_json(gateway, flips) -> None:
    a, b = flips
    gw = gateway(_cfg(a, b, ACTIVE))
    a.set("refuse")
    b.set("fail")
    wait_health(gw, a, "unhealthy")
    wait_health(gw, b, "unhealthy")
    r = gw.request("GET", "/x")
    assert r.status == 503
    body = r.json()
    assert body["message"] == "failure to get a peer from the ring-balancer" and body["request_id"]
    assert r.header("content-type").startswith("application/json")
    a.set("ok")
    wait_health(gw, a, "healthy")
    assert gw.request("GET", "/x").status == 200


def test_health_survives_a_reload_and_unhealthy_stays_out_without_unhealthy_probes(gateway, flips) -> None:
    """With ``unhealthy.interval`` 0 nothing probes an unhealthy target, so it stays out (Kong's rule: only active
    checks or a manual re-enable bring it back); a reload keeps that state."""
    a, b = flips
    hc = {"active": {**ACTIVE["active"], "unhealthy": {"interval": 0, "http_failures": 2}}}
    gw = gateway(_cfg(a, b, hc))
    b.set("fail")
    wait_health(gw, b, "unhealthy")
    b.set("ok")
    time.sleep(0.4)
    assert health_of(gw)[b.hostport] == "unhealthy"
    gw.reload(_cfg(a, b, hc, tags=["reloaded"]))
    assert health_of(gw)[b.hostport] == "unhealthy"
    before = b.hits
    rs = hit(gw, 6)
    assert all(r.status == 200 for r in rs) and b.hits == before


def test_passive_failures_mark_a_target_down(gateway, flips) -> None:
    a, b = flips
    hc = {"passive": {"unhealthy": {"http_failures": 2, "tcp_failures": 1, "timeouts": 1}}}
    gw = gateway(_cfg(a, b, hc))
    b.set("fail")
    rs = hit(gw, 8)  # b answers 500 twice (passive http_failures 2), then gets nothing
    assert sum(r.status == 500 for r in rs) == 2
    wait_health(gw, b, "unhealthy", timeout=2)
    before = b.hits
    assert all(r.status == 200 for r in hit(gw, 6)) and b.hits == before


def test_passive_connect_failure_marks_a_target_down(gateway, flips) -> None:
    a, b = flips
    hc = {"passive": {"unhealthy": {"tcp_failures": 1}}}
    gw = gateway(_cfg(a, b, hc))
    b.set("refuse")
    hit(gw, 4)
    wait_health(gw, b, "unhealthy", timeout=2)
    assert all(r.status == 200 for r in hit(gw, 6))


def test_gwanmun_health_command(gateway, flips) -> None:
    a, b = flips
    gw = gateway(_cfg(a, b, ACTIVE))
    b.set("fail")
    wait_health(gw, b, "unhealthy")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-m", "gwanmun", "health", "--pid-file", str(gw.pid_file)],
                         capture_output=True, text=True, env=env, timeout=20, cwd=str(REPO_ROOT))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "upstream pool (active checks; 1 worker)"
    row_a = next(ln for ln in lines if a.hostport in ln)
    row_b = next(ln for ln in lines if b.hostport in ln)
    assert row_a.split()[1] == "healthy"
    assert row_b.split()[1] == "unhealthy" and "active http" in row_b
    js = subprocess.run([sys.executable, "-m", "gwanmun", "health", "--pid-file", str(gw.pid_file), "--json"],
                        capture_output=True, text=True, env=env, timeout=20, cwd=str(REPO_ROOT))
    data = json.loads(js.stdout)
    assert data["workers"][0]["upstreams"]["pool"]["active"] is True
    gw.stop()
    gone = subprocess.run([sys.executable, "-m", "gwanmun", "health", "--pid-file", str(gw.pid_file)],
                          capture_output=True, text=True, env=env, timeout=20, cwd=str(REPO_ROOT))
    assert gone.returncode == 1 and "gwanmun health:" in gone.stderr
    assert not glob.glob(f"{gw.pid_file}.health.*.json")  # a worker removes its file when it stops
