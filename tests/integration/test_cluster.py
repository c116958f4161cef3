"""Three gateway nodes sharing the real PostgreSQL on 127.0.0.1:5432 (a fresh database per test, dropped after).

- A change made through any node's Admin API is served by every worker of every node: propagation (commit to the
  last node's ``config_reloaded``) is measured over 20 changes, p50 and p99 printed, p99 < 1 s asserted.
- The database made unreachable mid-traffic (new connections refused, the nodes' connections terminated): every
  node keeps serving with no failed request, writes get 503, a node restarted meanwhile serves its last known good
  copy, and when the database is back every node reconnects by itself and applies the next change.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.fixtures.admin import AdminNode, admin_config, event_time
from tests.fixtures.gateway import REPO_ROOT
from tests.fixtures.rawhttp import wait_for

asyncpg = pytest.importorskip("asyncpg")

PG = os.environ.get("GWANMUN_TEST_PG", "postgresql://{user}@127.0.0.1:5432/{db}")


async def _admin_connection():
    last = None
    for user in ("postgres", "root"):
        try:
            return await asyncpg.connect(PG.format(user=user, db="postgres"), timeout=5), user
        except Exception as exc:  # noqa: BLE001
            last = exc
    raise last  # type: ignore[misc]


def _sql(*statements: str) -> None:
    async def main():
        conn, _ = await _admin_connection()
        try:
            for s in statements:
                await conn.execute(s)
        finally:
            await conn.close()

    asyncio.run(main())


@pytest.fixture
def pg_database():
    """A fresh database (gwanmun_test_<random>) with the schema applied by `gwanmun migrations up`; its DSN."""
    async def probe() -> str:
        conn, user = await _admin_connection()
        await conn.close()
        return user

    try:
        user = asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable on 127.0.0.1:5432 ({exc})")
    name = f"gwanmun_test_{uuid.uuid4().hex[:12]}"
    _sql(f"CREATE DATABASE {name}")
    dsn = PG.format(user=user, db=name)
    try:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        out = subprocess.run([sys.executable, "-m", "gwanmun", "migrations", "up", "--database", dsn],
                             cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "applied 001_config_versions" in out.stdout, out.stdout + out.stderr
        yield name, dsn
    finally:
        _sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _node(gateway, dsn: str, name: str, workers: int = 2) -> AdminNode:
    cfg = admin_config({"_format_version": "3.0"}, database="postgres", postgres_dsn=dsn)
    return AdminNode(gateway(cfg, name=name, workers=workers))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def test_a_change_through_any_node_reaches_every_worker_of_every_node_within_a_second(pg_database, gateway,
                                                                                       scripted):
    _, dsn = pg_database
    nodes = [_node(gateway, dsn, f"node{i}") for i in range(3)]
    assert nodes[0].api.put("/services/svc", {"url": scripted.url}).status == 200
    for n in nodes:
        n.wait_version(1)
    samples = []
    for i in range(20):
        writer = nodes[i % 3]
        marks = [n.gw.mark() for n in nodes]
        t0 = time.time()
        r = writer.api.post("/services/svc/routes", {"name": f"r{i}", "paths": [f"/p{i}"]})
        assert r.status == 201, r.json
        version = writer.version()
        latest = 0.0
        for n, mark in zip(nodes, marks):
            reloaded = n.wait_version(version, timeout=5, after=mark)
            assert reloaded["workers"] == 2 and reloaded["failed"] == 0
            latest = max(latest, event_time(reloaded))
        samples.append(latest - t0)
    p50, p99 = statistics.median(samples), _percentile(samples, 0.99)
    print(f"\npropagation over {len(samples)} changes, 3 nodes x 2 workers: p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, max {max(samples) * 1000:.0f} ms")
    assert p99 < 1.0
    # every node serves the last route (each answer comes from either worker)
    for n in nodes:
        for _ in range(6):
            assert n.gw.request("GET", "/p19/echo").status == 200
    assert all(n.api.get("/status").json["config"]["version"] == 21 for n in nodes)


class Traffic:
    """Clients requesting /live/echo from every node in turn until stopped (bounded: 60 s, 100,000 requests)."""

    def __init__(self, nodes: list[AdminNode]) -> None:
        self.nodes = nodes
        self.ok = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + 60
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline and i < 100_000:
            node = self.nodes[i % len(self.nodes)]
            i += 1
            try:
                r = node.gw.request("GET", "/live/echo", timeout=5)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{node.gw.name}: {r.status}")
            except OSError as exc:
                self.failed.append(f"{node.gw.name}: {exc}")
            time.sleep(0.002)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def test_the_database_going_away_mid_traffic_changes_nothing_and_nodes_reconnect_by_themselves(pg_database, gateway,
                                                                                                scripted):
    name, dsn = pg_database
    nodes = [_node(gateway, dsn, f"node{i}", workers=1) for i in range(3)]
    nodes[0].api.put("/services/svc", {"url": scripted.url})
    nodes[0].api.put("/services/svc/routes/live", {"paths": ["/live"]})
    version = nodes[0].version()
    for n in nodes:
        n.wait_version(version)
    with Traffic(nodes) as traffic:
        wait_for(lambda: traffic.ok > 30, 10, 0.01, "traffic flowing")
        marks = [n.gw.mark() for n in nodes]
        # the database goes away: no new connections, and every existing one is cut
        _sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
             f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        for n, mark in zip(nodes, marks):
            n.gw.wait_event("config_store_unreachable", timeout=10, after=mark)
        before = traffic.ok
        wait_for(lambda: traffic.ok > before + 60, 10, 0.01, "traffic during the outage")
        r = nodes[1].api.post("/services/svc/routes", {"name": "new", "paths": ["/new"]})
        assert r.status == 503 and "unavailable" in r.json["message"]
        assert nodes[1].api.get("/routes/live").status == 200  # reads are served from memory
        status = nodes[2].api.get("/status").json
        assert status["database"]["reachable"] is False and status["config"]["version"] == version
        # a node restarted during the outage serves its last known good copy (no traffic to it while it is down)
        traffic.nodes = nodes[:2]
        time.sleep(0.05)
        nodes[2].gw.stop()
        nodes[2] = _node(gateway, dsn, "node2", workers=1)
        nodes[2].gw.wait_event("config_from_cache")
        assert nodes[2].gw.request("GET", "/live/echo").status == 200
        traffic.nodes = list(nodes)
        before = traffic.ok
        wait_for(lambda: traffic.ok > before + 30, 10, 0.01, "traffic to the restarted node")
        # the database comes back: every node reconnects by itself
        marks = [n.gw.mark() for n in nodes]
        _sql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        for n, mark in zip(nodes, marks):
            n.gw.wait_event("config_store_reachable", timeout=10, after=mark)
        t0 = time.time()
        r = nodes[1].api.post("/services/svc/routes", {"name": "new", "paths": ["/new"]})
        assert r.status == 201, r.json
        new_version = nodes[1].version()
        for n, mark in zip(nodes, marks):
            reloaded = n.wait_version(new_version, timeout=5, after=mark)
            assert event_time(reloaded) - t0 < 1.0
            assert n.gw.request("GET", "/new/echo").status == 200
        assert nodes[2].api.get("/status").json["config"]["source"] == "database"
    assert traffic.failed == [], traffic.failed[:10]
    print(f"\noutage: {traffic.ok} requests served across the outage and a restart, 0 failed")
