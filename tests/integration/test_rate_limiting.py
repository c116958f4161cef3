"""Rate limiting through real gateway processes (issue 6): the local policy exact across 2 workers, the redis policy
exact across 2 nodes x 2 workers under 200 concurrent clients, the response fields and the 429, limits by consumer,
spoofed X-Forwarded-For, Redis stopped (and started again) during traffic, limits that survive a reload, and
limit-conn with a slow upstream. Windows are a day long (and the tests keep clear of midnight UTC), so no boundary
falls inside a test."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.fixtures.redis import needs_redis
from tests.fixtures.gateway import route, service
from tests.fixtures.switchable import Switchable




@pytest.fixture(autouse=True)
def clear_of_midnight():
    """Day windows: never straddle 00:00 UTC."""
    left = 86400 - time.time() % 86400
    if left < 30:
        time.sleep(left + 1)


@pytest.fixture
def up():
    u = Switchable("up")
    yield u
    u.close()


def tag() -> str:
    return uuid.uuid4().hex[:10]  # in route names: counters are keyed by the plugin's scope, and Redis outlives a run


def rl(**config) -> dict:
    return {"name": "rate-limiting", "config": config}


def get(gw, path: str, headers: dict | None = None, timeout: float = 10.0):
    c = http.client.HTTPConnection(gw.host, gw.port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def blast(gws: list, path: str, n: int, threads: int, headers: dict | None = None) -> Counter:
    """``n`` requests (each on its own connection) from ``threads`` clients, spread over the gateways."""
    with cf.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(get, gws[i % len(gws)], path, headers) for i in range(n)]
        return Counter(f.result()[0] for f in futures)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


# ---------------------------------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------------------------------
def test_local_policy_is_exact_across_two_workers(gateway, up):
    gw = gateway({"services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=[
        rl(day=300, limit_by="ip", algorithm="fixed")])])]}, workers=2)
    pids = gw.worker_pids()
    assert len(pids) == 2
    before = {p: cpu_ticks(p) for p in pids}
    counts = blast([gw], "/x", 700, 100)
    assert counts == {200: 300, 429: 400}, counts
    assert all(cpu_ticks(p) > before[p] for p in pids)  # both workers served: one count, not one per worker


@needs_redis
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "gcra"])
def test_redis_policy_is_exact_across_two_nodes(gateway, up, algorithm):
    limit = 400
    cfg = {"services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=[rl(
        day=limit, limit_by="ip", algorithm=algorithm, policy="redis",
        redis={"host": "127.0.0.1", "port": 6379, "timeout": 2000})])])]}
    nodes = [gateway(cfg, name="a", workers=2), gateway(cfg, name="b", workers=2)]
    counts = blast(nodes, "/x", 2 * limit, 200)
    assert set(counts) <= {200, 429}, counts
    if algorithm == "sliding":
        assert abs(counts[200] - limit) <= limit // 100, counts
    else:
        assert counts[200] == limit, counts


# ---------------------------------------------------------------------------------------------------------------------
# what clients see
# ---------------------------------------------------------------------------------------------------------------------
def test_fields_on_admitted_requests_and_the_429(gateway, up):
    gw = gateway({"services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=[
        rl(minute=2, day=100, limit_by="ip", algorithm="fixed")])])]})
    status, h, _ = get(gw, "/x")
    assert status == 200
    assert h["RateLimit-Policy"] == '"minute";q=2;w=60, "day";q=100;w=86400'
    assert h["RateLimit"].startswith('"minute";r=1;t=') and ', "day";r=99;t=' in h["RateLimit"]
    assert h["X-RateLimit-Limit-Minute"] == "2" and h["X-RateLimit-Remaining-Minute"] == "1"
    assert h["X-RateLimit-Limit-Day"] == "100" and h["X-RateLimit-Remaining-Day"] == "99"
    assert h["RateLimit-Limit"] == "2" and h["RateLimit-Remaining"] == "1" and 1 <= int(h["RateLimit-Reset"]) <= 60
    assert get(gw, "/x")[0] == 200
    status, h, body = get(gw, "/x")
    assert status == 429
    assert 1 <= int(h["Retry-After"]) <= 60 and h["X-RateLimit-Remaining-Minute"] == "0"
    assert h["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["message"] == "API rate limit exceeded" and doc["request_id"]
    assert h.get("X-Request-ID", doc["request_id"]) == doc["request_id"]


def test_limit_by_consumer_with_key_auth(gateway, up):
    gw = gateway({
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]},
                      {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]}],
        "services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=[
            {"name": "key-auth"}, rl(day=2, limit_by="consumer", algorithm="fixed")])])]})
    alice = [get(gw, "/x", {"apikey": "alice-key"})[0] for _ in range(3)]
    bob = [get(gw, "/x", {"apikey": "bob-key"})[0] for _ in range(3)]
    assert alice == [200, 200, 429] and bob == [200, 200, 429]
    assert get(gw, "/x")[0] == 401  # key-auth answers first: no key is no consumer, and no count


def test_a_spoofed_forwarded_for_makes_no_new_bucket(gateway, up):
    plugins = [rl(day=3, limit_by="ip", algorithm="fixed")]
    gw = gateway({"services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=plugins)])]})
    statuses = [get(gw, "/x", {"X-Forwarded-For": f"203.0.113.{i}"})[0] for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    # behind a trusted proxy the forwarded client is the key
    trusted = gateway({"gateway": {"trusted_ips": ["127.0.0.1"]},
                       "services": [service("s", up.url, [route(f"r-{tag()}", ["/"], plugins=plugins)])]})
    assert [get(trusted, "/x", {"X-Forwarded-For": f"203.0.113.{i}"})[0] for i in range(6)] == [200] * 6


# ---------------------------------------------------------------------------------------------------------------------
# Redis going away
# ---------------------------------------------------------------------------------------------------------------------
class RedisServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def own_redis():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = RedisServer(port).start()
    yield server
    server.kill()


def test_redis_stopped_during_traffic(gateway, up, own_redis):
    redis = {"host": "127.0.0.1", "port": own_redis.port, "timeout": 50}
    gw = gateway({"services": [service("s", up.url, [
        route("open", ["/open"], plugins=[rl(day=3, limit_by="ip", algorithm="fixed", policy="redis",
                                             redis=redis, fault_tolerant=True)]),
        route("closed", ["/closed"], plugins=[rl(day=3, limit_by="ip", algorithm="fixed", policy="redis",
                                                 redis=redis, fault_tolerant=False)])])]})
    for path in ("/open", "/closed"):
        assert [get(gw, path)[0] for _ in range(4)] == [200, 200, 200, 429]

    seen: list[tuple[str, int, float]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            for path in ("/open", "/closed"):
                t = time.monotonic()
                status = get(gw, path, timeout=5)[0]
                seen.append((path, status, time.monotonic() - t))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    mark = len(seen)
    own_redis.kill()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(10)
    during = seen[mark:]
    assert len(during) > 20
    statuses = Counter((p, s) for p, s, _ in during)
    assert not {s for _, s, _ in during} - {200, 429, 500}, statuses  # never 401/403, never a gateway timeout
    assert max(d for _, _, d in during) < 2.0  # never hangs
    tail = during[len(during) // 2:]  # Redis is surely gone by then
    assert {s for p, s, _ in tail if p == "/open"} == {200}, statuses  # fails open
    assert {s for p, s, _ in tail if p == "/closed"} == {500}, statuses  # fails closed, as Kong (500)
    failed = gw.wait_event("rate_limit_store_failed")
    assert failed["fault_tolerant"] in (True, False) and "redis" in failed
    assert len(gw.stderr_events("rate_limit_store_failed")) <= 4  # logged, not once per request

    own_redis.start()  # an empty Redis on the same port: the gateway reconnects by itself
    deadline = time.monotonic() + 10
    while get(gw, "/closed")[0] == 500:
        assert time.monotonic() < deadline, "the limits did not come back"
        time.sleep(0.1)
    assert [get(gw, "/open")[0] for _ in range(4)] == [200, 200, 200, 429]  # limits apply again


# ---------------------------------------------------------------------------------------------------------------------
# reloads, concurrency
# ---------------------------------------------------------------------------------------------------------------------
def test_limits_survive_a_reload(gateway, up):
    name = f"r-{tag()}"
    plugins = [rl(day=5, limit_by="ip", algorithm="fixed")]
    cfg = {"services": [service("s", up.url, [route(name, ["/"], plugins=plugins)])]}
    gw = gateway(cfg, workers=2)
    assert [get(gw, "/x")[0] for _ in range(3)] == [200] * 3
    changed = {"services": [service("s", up.url, [route(name, ["/"], plugins=plugins),
                                                    route("other", ["/other"])])]}
    assert gw.reload(changed)["event"] == "config_reloaded"
    assert get(gw, "/other")[0] == 200
    assert [get(gw, "/x")[0] for _ in range(3)] == [200, 200, 429]


def test_limit_conn_with_a_slow_upstream(gateway):
    slow = Switchable("slow", "slow", delay=1.0)
    try:
        gw = gateway({"services": [service("s", slow.url, [route(f"r-{tag()}", ["/"], plugins=[
            {"name": "limit-conn", "config": {"conn": 2, "key": "ip"}}])])]}, workers=2)
        t = time.monotonic()
        counts = blast([gw], "/x", 6, 6)
        assert counts == {200: 2, 503: 4}, counts
        assert time.monotonic() - t < 3
        assert slow.peak <= 2
        # a client that gives up mid-request gives its slot back at once (its upstream request is still running)
        held = slow.hits
        s = socket.create_connection((gw.host, gw.port))
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while slow.hits == held:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s.close()
        time.sleep(0.3)
        assert blast([gw], "/x", 2, 2) == {200: 2}
    finally:
        slow.close()
