"""Health checks: Kong's (lua-resty-healthcheck's) counters and states, scheduling on a fake clock, the balancer
skipping unhealthy targets, state kept across a reload, probes against real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter

import pytest

from gwanmun.config.model import HealthchecksConfig
from gwanmun.upstream.balancer import RoundRobin, Target
from gwanmun.upstream.health import (
    HEALTHY, MOSTLY_HEALTHY, MOSTLY_UNHEALTHY, UNHEALTHY, ActiveSpec, HealthSpec, HealthTable, TargetHealth,
    Thresholds, classify, compile_healthchecks, probe, probe_request,
)


def th() -> TargetHealth:
    return TargetHealth("10.0.0.1:80", "10.0.0.1", 80)


# -- the state machine ------------------------------------------------------------------------------------------


def test_failures_below_the_limit_keep_it_healthy_then_it_falls() -> None:
    t = th()
    assert not t.record("http", 3) and t.state == MOSTLY_HEALTHY and t.healthy
    assert not t.record("http", 3) and t.http_failures == 2
    assert t.record("http", 3) and t.state == UNHEALTHY and not t.healthy
    assert t.counters() == {"successes": 0, "http_failures": 0, "tcp_failures": 0, "timeouts": 0}


def test_a_success_resets_every_failure_counter_and_a_failure_only_successes() -> None:
    t = th()
    t.record("http", 3)
    t.record("tcp", 3)
    t.record("timeout", 3)
    assert (t.http_failures, t.tcp_failures, t.timeouts) == (1, 1, 1)
    t.record("success", 2)  # mostly_healthy: successes are counted, failures reset
    assert (t.http_failures, t.tcp_failures, t.timeouts, t.successes) == (0, 0, 0, 1)
    t.record("tcp", 3)
    assert t.successes == 0 and t.tcp_failures == 1
    # each failure kind has its own counter and limit: two http + two tcp do not make four failures
    t.record("http", 3)
    t.record("tcp", 3)
    assert t.healthy and (t.http_failures, t.tcp_failures) == (1, 2)


def test_consecutive_failures_interrupted_by_a_success_start_over() -> None:
    t = th()
    for _ in range(2):
        t.record("timeout", 3)
    t.record("success", 5)
    for _ in range(2):
        t.record("timeout", 3)
    assert t.healthy
    assert t.record("timeout", 3) and t.state == UNHEALTHY


def test_recovery_needs_consecutive_successes() -> None:
    t = th()
    t.set(False)
    assert not t.record("success", 2) and t.state == MOSTLY_UNHEALTHY and not t.healthy
    t.record("http", 5)  # a failure resets the successes
    assert t.successes == 0 and not t.healthy
    t.record("success", 2)
    assert t.record("success", 2) and t.state == HEALTHY and t.counters()["successes"] == 0


def test_settled_states_do_not_count_their_own_side() -> None:
    t = th()
    t.record("success", 2)
    assert t.state == HEALTHY and t.successes == 0
    t.set(False)
    t.record("http", 2)
    assert t.state == UNHEALTHY and t.http_failures == 0


def test_a_zero_limit_disables_that_kind() -> None:
    t = th()
    t.record("http", 1)  # -> unhealthy at once
    assert not t.healthy
    for _ in range(10):
        assert not t.record("success", 0)
    assert not t.healthy and t.successes == 0
    t2 = th()
    t2.record("tcp", 5)
    t2.record("timeout", 0)  # disabled: does not reset nor count
    assert t2.tcp_failures == 1 and t2.timeouts == 0


def test_classify_by_status_lists() -> None:
    th_ = Thresholds(healthy_statuses=frozenset({200}), unhealthy_statuses=frozenset({500}))
    assert classify(200, "http", th_) == "success"
    assert classify(500, "http", th_) == "http"
    assert classify(404, "http", th_) is None  # in neither list: ignored
    assert classify(None, "tcp", th_) == "tcp"
    assert classify(None, "timeout", th_) == "timeout"
    with pytest.raises(ValueError):
        classify(None, "bogus", th_)


# -- compiled config ----------------------------------------------------------------------------------------------


def hc(**data) -> HealthchecksConfig:
    return HealthchecksConfig.model_validate(data)


def test_defaults_disable_everything() -> None:
    spec = compile_healthchecks("u", HealthchecksConfig(), [])
    assert not spec.enabled and not spec.active.enabled and not spec.passive.enabled
    assert spec.active.thresholds.healthy_statuses == {200, 302}
    assert spec.passive.unhealthy_statuses == {429, 500, 503}


def test_compile_active_and_passive() -> None:
    spec = compile_healthchecks("u", hc(
        active={"type": "tcp", "timeout": 0.5, "concurrency": 2, "headers": {"x-a": ["1", "2"]},
                "healthy": {"interval": 2, "successes": 3},
                "unhealthy": {"interval": 1, "tcp_failures": 4, "timeouts": 5, "http_failures": 6}},
        passive={"unhealthy": {"http_failures": 7}},
    ), [("a:1", "a", 1)])
    a = spec.active
    assert (a.type, a.timeout, a.concurrency, a.healthy_interval, a.unhealthy_interval) == ("tcp", 0.5, 2, 2, 1)
    assert a.headers == (("x-a", "1"), ("x-a", "2"))
    assert (a.thresholds.successes, a.thresholds.tcp_failures, a.thresholds.timeouts,
            a.thresholds.http_failures) == (3, 4, 5, 6)
    assert spec.passive.http_failures == 7 and spec.passive.enabled
    assert spec.targets == (("a:1", "a", 1),)


def test_config_refuses_threshold_and_grpc_active() -> None:
    with pytest.raises(Exception, match="threshold' is not supported by gwanmun yet"):
        hc(threshold=50)
    with pytest.raises(Exception, match="type 'grpc' are not supported"):
        hc(active={"type": "grpc", "healthy": {"interval": 1}})
    hc(active={"type": "grpc"})  # disabled: accepted as Kong's record
    with pytest.raises(Exception):
        hc(active={"healthy": {"successes": 256}})  # Kong's 0-255


# -- scheduling on a fake clock -----------------------------------------------------------------------------------


def table_with(spec: HealthSpec, targets: list[Target]) -> tuple[HealthTable, RoundRobin]:
    rr = RoundRobin(tuple(targets))

    class Svc:
        upstream = spec.upstream
        balancer = rr

    t = HealthTable()
    t.apply([spec], [Svc()])
    return t, rr


def spec_of(labels, active=ActiveSpec(), passive=Thresholds()) -> HealthSpec:
    return HealthSpec("u", tuple((lb, lb.rsplit(":", 1)[0], int(lb.rsplit(":", 1)[1])) for lb in labels),
                      active, passive)


def test_due_probes_each_side_at_its_own_interval() -> None:
    spec = spec_of(["10.0.0.1:80", "10.0.0.2:80"],
                   active=ActiveSpec(healthy_interval=10, unhealthy_interval=2,
                                     thresholds=Thresholds(successes=1, http_failures=1)))
    table, _ = table_with(spec, [])
    uh = table.upstreams["u"]
    a, b = uh.targets.values()
    b.set(False)
    now = 100.0
    batch, wake = uh.due(now)
    assert batch == [a, b] and wake == 102
    batch, wake = uh.due(101)
    assert batch == [] and wake == 102
    batch, wake = uh.due(102)
    assert batch == [b] and wake == 104
    batch, _ = uh.due(110)
    assert batch == [a, b]
    spec2 = spec_of(["10.0.0.1:80"], active=ActiveSpec(healthy_interval=0, unhealthy_interval=3))
    table2, _ = table_with(spec2, [])
    uh2 = table2.upstreams["u"]
    assert uh2.due(0) == ([], 3)  # the only target is healthy: nothing to probe, healthy checks off


def test_run_loop_with_a_fake_prober() -> None:
    """The checker's loop with a scripted prober: a target that fails comes back when its probes succeed."""
    spec = spec_of(["10.0.0.1:80", "10.0.0.2:80"],
                   active=ActiveSpec(healthy_interval=0.01, unhealthy_interval=0.01,
                                     thresholds=Thresholds(successes=2, http_failures=2,
                                                           healthy_statuses=frozenset({200}),
                                                           unhealthy_statuses=frozenset({500}))))
    t1, t2 = Target("10.0.0.1", 80), Target("10.0.0.2", 80)
    table, rr = table_with(spec, [t1, t2])
    answers = {"10.0.0.1": 200, "10.0.0.2": 500}
    calls: Counter = Counter()

    async def prober(aspec, host, port):
        calls[host] += 1
        return "http", answers[host]

    async def main() -> None:
        task = asyncio.create_task(table.upstreams["u"].run(prober))
        for _ in range(200):
            await asyncio.sleep(0.005)
            if not t2.healthy:
                break
        assert not t2.healthy and t1.healthy
        assert {rr.pick() for _ in range(10)} == {t1}
        answers["10.0.0.2"] = 200
        for _ in range(200):
            await asyncio.sleep(0.005)
            if t2.healthy:
                break
        assert t2.healthy
        task.cancel()

    asyncio.run(main())
    assert calls["10.0.0.1"] >= 2


# -- the balancer -----------------------------------------------------------------------------------------------


def test_round_robin_skips_unhealthy_and_stays_smooth() -> None:
    a, b, c = Target("10.0.0.1", 80, weight=5), Target("10.0.0.2", 80, weight=1), Target("10.0.0.3", 80, weight=1)
    rr = RoundRobin((a, b, c))
    assert "".join("abc"[[a, b, c].index(rr.pick())] for _ in range(7)) == "aabacaa"
    b.healthy = False
    seq = [rr.pick() for _ in range(60)]
    assert b not in seq and Counter(seq) == {a: 50, c: 10}
    # smooth: never more than 5 a's in a row when c has 1/6 of the traffic
    s = "".join("a" if t is a else "c" for t in seq)
    assert "aaaaaaa" not in s
    b.healthy = True
    seq = [rr.pick() for _ in range(70)]
    assert Counter(seq) == {a: 50, b: 10, c: 10}


def test_round_robin_all_down_and_single_target() -> None:
    a, b = Target("10.0.0.1", 80), Target("10.0.0.2", 80)
    rr = RoundRobin((a, b))
    a.healthy = b.healthy = False
    assert rr.pick() is None
    b.healthy = True
    assert rr.pick() is b and rr.pick() is b
    one = RoundRobin((Target("10.0.0.9", 80),))
    one.targets[0].healthy = False
    assert one.pick() is None


# -- the table: passive reports, binding, reload -----------------------------------------------------------------


PASSIVE = Thresholds(successes=2, http_failures=2, tcp_failures=1, timeouts=2,
                     healthy_statuses=frozenset({200}), unhealthy_statuses=frozenset({500, 503}))


def test_passive_reports_mark_every_bound_target_down() -> None:
    spec = spec_of(["10.0.0.1:80", "10.0.0.2:80"], passive=PASSIVE)
    s1 = (Target("10.0.0.1", 80), Target("10.0.0.2", 80))
    s2 = (Target("10.0.0.1", 80),)  # another service over the same upstream

    class A:
        upstream = "u"
        balancer = RoundRobin(s1)

    class B:
        upstream = "u"
        balancer = RoundRobin(s2)

    table = HealthTable()
    table.apply([spec], [A(), B()])
    table.report(s1[0], 500, "http")
    table.report(s1[0], 404, "http")  # in neither list: ignored, does not reset
    assert s1[0].healthy
    table.report(s2[0], 503, "http")  # the other service's Target: same state
    assert not s1[0].healthy and not s2[0].healthy
    table.report(s1[1], None, "tcp")
    assert not s1[1].healthy
    assert A.balancer.pick() is None and B.balancer.pick() is None
    table.report(Target("1.2.3.4", 1), 500, "http")  # unknown target: ignored
    assert table.set_health("u", "10.0.0.1:80", True) and s1[0].healthy and s2[0].healthy
    assert not table.set_health("u", "nope:1", True)
    snap = table.snapshot()
    json.dumps(snap)
    rows = {t["target"]: t for t in snap["upstreams"]["u"]["targets"]}
    assert rows["10.0.0.2:80"]["health"] == "unhealthy" and rows["10.0.0.1:80"]["reason"] == "set manually"


def test_passive_off_reports_nothing() -> None:
    spec = spec_of(["10.0.0.1:80"])
    t = Target("10.0.0.1", 80)
    table, _ = table_with(spec, [t])
    for _ in range(10):
        table.report(t, 500, "http")
        table.report(t, None, "tcp")
    assert t.healthy


def test_reload_keeps_the_state_of_targets_that_still_exist() -> None:
    spec = spec_of(["10.0.0.1:80", "10.0.0.2:80"], passive=PASSIVE)
    old = (Target("10.0.0.1", 80), Target("10.0.0.2", 80))
    table, _ = table_with(spec, list(old))
    table.report(old[0], None, "tcp")
    assert not old[0].healthy
    # the new runtime: new Target objects, one target removed, one added
    spec2 = spec_of(["10.0.0.1:80", "10.0.0.3:80"], passive=PASSIVE)
    new = (Target("10.0.0.1", 80), Target("10.0.0.3", 80))

    class Svc:
        upstream = "u"
        balancer = RoundRobin(new)

    table.apply([spec2], [Svc()])
    assert not new[0].healthy and new[1].healthy
    assert set(table.upstreams["u"].targets) == {"10.0.0.1:80", "10.0.0.3:80"}
    table.report(old[1], None, "tcp")  # a request still on the old runtime: ignored
    # checks turned off entirely: nothing could bring the target back, so it is healthy again
    table.apply([spec_of(["10.0.0.1:80"])], [Svc()])
    assert new[0].healthy


def test_status_file(tmp_path) -> None:
    path = tmp_path / "gw.pid.health.0.json"
    spec = spec_of(["10.0.0.1:80"], passive=PASSIVE)
    t = Target("10.0.0.1", 80)
    table = HealthTable(str(path), 0)

    class Svc:
        upstream = "u"
        balancer = RoundRobin((t,))

    table.apply([spec], [Svc()])
    table.report(t, None, "tcp")  # no loop: written at once
    data = json.loads(path.read_text())
    assert data["upstreams"]["u"]["targets"][0]["health"] == "unhealthy"
    table.close()
    assert not path.exists()


# -- probes against real sockets ----------------------------------------------------------------------------------


def test_probe_request_head() -> None:
    spec = ActiveSpec(http_path="/status", headers=(("X-Probe", "1"),))
    assert probe_request(spec, "10.0.0.1", 80).startswith(b"GET /status HTTP/1.0\r\nHost: 10.0.0.1\r\n")
    assert b"X-Probe: 1\r\n" in probe_request(spec, "::1", 8080)
    assert b"Host: [::1]:8080\r\n" in probe_request(spec, "::1", 8080)


def test_probe_outcomes() -> None:
    async def main() -> None:
        async def answer(reader, writer, status=b"503 Service Unavailable"):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        async def hang(reader, writer):
            await asyncio.sleep(5)

        async def garbage(reader, writer):
            writer.write(b"NOT HTTP\r\n\r\n")
            await writer.drain()
            writer.close()

        servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (answer, hang, garbage)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
        closed.close()
        spec = ActiveSpec(timeout=0.2)
        assert await probe(spec, "127.0.0.1", ports[0]) == ("http", 503)
        assert await probe(spec, "127.0.0.1", ports[1]) == ("timeout", None)
        assert await probe(spec, "127.0.0.1", ports[2]) == ("tcp", None)
        assert await probe(spec, "127.0.0.1", refused) == ("tcp", None)
        tcp = ActiveSpec(type="tcp", timeout=0.2)
        assert await probe(tcp, "127.0.0.1", ports[1]) == ("success", None)
        assert await probe(tcp, "127.0.0.1", refused) == ("tcp", None)
        for s in servers:
            s.close()

    asyncio.run(main())
