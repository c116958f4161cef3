"""Retries, circuit breakers, bulkheads and fallbacks through the real gateway (issue 4, items 4-7), against
upstreams whose behaviour each test switches (``tests/fixtures/switchable.py``)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures.gateway import route, service
from tests.fixtures.switchable import Switchable


@pytest.fixture
def ups():
    made: list[Switchable] = []

    def make(name: str, mode: str = "ok", **kw) -> Switchable:
        u = Switchable(name, mode, **kw)
        made.append(u)
        return u

    yield make
    for u in made:
        u.close()


def balanced(name: str, targets: list[Switchable], routes: list[dict] | None = None, **kw) -> tuple[dict, dict]:
    """A service over an upstream of ``targets`` (round-robin), with one route ``/<name>``."""
    upstream = {"name": f"{name}.up", "targets": [{"target": t.target} for t in targets]}
    svc = service(name, f"http://{name}.up", routes or [route(name, [f"/{name}"])], **kw)
    return svc, upstream


def config(*pairs: tuple[dict, dict], gateway: dict | None = None) -> dict:
    cfg = {"services": [p[0] for p in pairs], "upstreams": [p[1] for p in pairs if p[1] is not None]}
    if gateway:
        cfg["gateway"] = gateway
    return cfg


FAST_RETRY = {"max_retries": 2, "on_statuses": [503], "backoff_base": 1, "backoff_max": 5}


# ----------------------------------------------------------------------------------------------------------------
# retries
# ----------------------------------------------------------------------------------------------------------------
def test_retry_on_status_goes_to_another_target(gateway, ups):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(balanced("s", [bad, good], retry=FAST_RETRY)))
    for _ in range(20):
        r = gw.request("GET", "/s/x")
        assert r.status == 200 and r.json()["server"] == "good"
    # round-robin: each request takes two picks (bad, then good for the retry), so every request met bad first
    assert bad.hits == 20 and good.hits == 20


def test_no_retry_without_policy(gateway, ups):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(balanced("s", [bad, good])))
    statuses = [gw.request("GET", "/s/x").status for _ in range(10)]
    assert statuses.count(503) == 5 and statuses.count(200) == 5


def test_post_is_not_retried_unless_opted_in(gateway, ups):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(
        balanced("s", [bad, good], retry=FAST_RETRY),
        balanced("t", [bad, good], retry={**FAST_RETRY, "retry_non_idempotent": True}),
    ))
    posts = [gw.request("POST", "/s/x", body=b"hello").status for _ in range(10)]
    assert posts.count(503) == 5
    for _ in range(10):
        r = gw.request("POST", "/t/x", body=b"payload-" + b"z" * 5000)
        assert r.status == 200 and r.json()["body"] == "payload-" + "z" * 5000  # the body was sent again whole


def test_chunked_body_is_resent_whole(gateway, ups, raw):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(balanced("t", [bad, good], retry={**FAST_RETRY, "retry_non_idempotent": True})))
    for _ in range(4):
        c = raw(gw.host, gw.port)
        c.send(b"POST /t/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        resp = c.read_response()
        assert resp.status == 200 and json.loads(resp.body)["body"] == "hello world"


def test_body_over_the_buffer_limit_is_not_retried(gateway, ups):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(balanced("t", [bad, good],
                                 retry={**FAST_RETRY, "retry_non_idempotent": True, "body_buffer_limit": 100})))
    small = [gw.request("POST", "/t/x", body=b"a" * 50).status for _ in range(6)]
    big = [gw.request("POST", "/t/x", body=b"a" * 500).status for _ in range(6)]
    assert small == [200] * 6
    assert big.count(503) == 3


def test_retry_on_timeout(gateway, ups):
    slow, good = ups("slow", "hang"), ups("good")
    gw = gateway(config(balanced("s", [slow, good], read_timeout=200,
                                 retry={**FAST_RETRY, "on_timeout": True})))
    for _ in range(4):
        t = time.monotonic()
        r = gw.request("GET", "/s/x")
        assert r.status == 200 and r.json()["server"] == "good"
        assert time.monotonic() - t < 2.0


def test_retry_on_connection_reset_as_502(gateway, ups):
    rst, good = ups("rst", "reset"), ups("good")
    gw = gateway(config(balanced("s", [rst, good], retry={**FAST_RETRY, "on_statuses": [502]})))
    assert all(gw.request("GET", "/s/x").status == 200 for _ in range(6))
    assert rst.hits >= 2


def test_retries_are_limited_by_max_retries(gateway, ups):
    a, b, c = ups("a", "fail"), ups("b", "fail"), ups("c", "fail")
    gw = gateway(config(balanced("s", [a, b, c], retry={**FAST_RETRY, "max_retries": 1})))
    r = gw.request("GET", "/s/x")
    assert r.status == 503 and gw.log_for(r.header("x-request-id"))["retries"] == 1
    assert a.hits + b.hits + c.hits == 2  # the first try and one retry, on two different targets
    assert sum(1 for u in (a, b, c) if u.hits) == 2


def test_retry_budget_caps_extra_load(gateway, ups):
    a, b = ups("a", "fail"), ups("b", "fail")
    budget = {"percent_can_retry": 20, "min_retries_per_second": 0, "ttl": 10000}
    gw = gateway(config(balanced("s", [a, b], retry={**FAST_RETRY, "max_retries": 3, "budget": budget})))
    n = 100
    assert all(gw.request("GET", "/s/x").status == 503 for _ in range(n))
    extra = a.hits + b.hits - n
    assert 15 <= extra <= 21, extra  # 20% of requests, not 3 x


# ----------------------------------------------------------------------------------------------------------------
# circuit breakers
# ----------------------------------------------------------------------------------------------------------------
BREAKER = {"minimum_number_of_calls": 4, "sliding_window_size": 4, "failure_rate_threshold": 50,
           "wait_duration_in_open_state": 700, "permitted_number_of_calls_in_half_open_state": 2}


def test_breaker_opens_answers_503_at_once_then_half_opens_and_closes(gateway, ups):
    up = ups("up", "fail")
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], circuit_breaker=BREAKER), None)))
    assert [gw.request("GET", "/s/x").status for _ in range(4)] == [503] * 4
    assert up.hits == 4
    r = gw.request("GET", "/s/x")
    assert r.status == 503 and up.hits == 4  # refused without reaching the upstream
    assert r.json()["message"].startswith("The upstream service is unavailable") and r.json()["request_id"]
    assert 1 <= int(r.header("retry-after")) <= 1
    opened = gw.wait_event("circuit_breaker", pred=lambda e: e["to"] == "open")
    assert opened["breaker"] == "s" and opened["from"] == "closed" and opened["failure_rate"] == 100.0
    assert opened["level"] == "warning"
    up.set("ok")
    time.sleep(0.8)
    assert [gw.request("GET", "/s/x").status for _ in range(3)] == [200] * 3  # 2 probes pass: closed again
    gw.wait_event("circuit_breaker", pred=lambda e: e["from"] == "open" and e["to"] == "half_open")
    gw.wait_event("circuit_breaker", pred=lambda e: e["from"] == "half_open" and e["to"] == "closed")
    assert gw.log_for(r.header("x-request-id"))["status"] == 503


def test_breaker_reopens_when_probes_fail(gateway, ups):
    up = ups("up", "fail")
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], circuit_breaker=BREAKER), None)))
    for _ in range(4):
        gw.request("GET", "/s/x")
    time.sleep(0.8)
    assert [gw.request("GET", "/s/x").status for _ in range(3)] == [503] * 3
    assert up.hits == 6  # two probes reached it, then the circuit opened again
    gw.wait_event("circuit_breaker", pred=lambda e: e["from"] == "half_open" and e["to"] == "open")


def test_slow_calls_open_the_circuit(gateway, ups):
    up = ups("up", "slow", delay=0.15)
    cb = {**BREAKER, "slow_call_duration_threshold": 100, "slow_call_rate_threshold": 50}
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], circuit_breaker=cb), None)))
    assert [gw.request("GET", "/s/x").status for _ in range(4)] == [200] * 4
    assert gw.request("GET", "/s/x").status == 503
    e = gw.wait_event("circuit_breaker", pred=lambda e: e["to"] == "open")
    assert e["slow_call_rate"] == 100.0


def test_breaker_state_survives_an_unrelated_reload_and_resets_on_its_own_change(gateway, ups):
    up, other = ups("up", "fail"), ups("other")
    cfg = config((service("s", up.url, [route("s", ["/s"])], circuit_breaker=BREAKER), None))
    gw = gateway(cfg)
    for _ in range(4):
        gw.request("GET", "/s/x")
    assert gw.request("GET", "/s/x").status == 503 and up.hits == 4
    cfg["services"].append(service("o", other.url, [route("o", ["/o"])]))
    gw.reload(cfg)
    assert gw.request("GET", "/o/x").status == 200
    assert gw.request("GET", "/s/x").status == 503 and up.hits == 4  # still open
    cfg["services"][0]["circuit_breaker"] = {**BREAKER, "failure_rate_threshold": 60}
    gw.reload(cfg)
    up.set("ok")
    assert gw.request("GET", "/s/x").status == 200 and up.hits == 5  # a new, closed breaker


def test_per_target_breaker_takes_a_bad_target_out(gateway, ups):
    bad, good = ups("bad", "fail"), ups("good")
    gw = gateway(config(balanced("s", [bad, good], circuit_breaker={
        **BREAKER, "per_target": True, "minimum_number_of_calls": 2, "sliding_window_size": 2,
        "failure_rate_threshold": 100, "wait_duration_in_open_state": 60000})))
    first = [gw.request("GET", "/s/x").status for _ in range(6)]
    assert first.count(503) <= 3
    assert [gw.request("GET", "/s/x").status for _ in range(20)] == [200] * 20
    assert bad.hits == first.count(503)
    gw.wait_event("circuit_breaker", pred=lambda e: e["to"] == "open" and e["breaker"].startswith("s/127.0.0.1:"))


# ----------------------------------------------------------------------------------------------------------------
# fallbacks
# ----------------------------------------------------------------------------------------------------------------
STATIC = {"response": {"status": 200, "headers": {"Content-Type": "application/json", "X-Fallback": "yes"},
                       "body": '{"memos": [], "stale": true}'}}


def test_static_fallback_when_the_circuit_is_open(gateway, ups):
    up = ups("up", "fail")
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], circuit_breaker=BREAKER,
                                 fallback={**STATIC, "on": ["circuit_open"]}), None)))
    assert [gw.request("GET", "/s/x").status for _ in range(4)] == [503] * 4  # failures relayed as they are
    r = gw.request("GET", "/s/x")
    assert r.status == 200 and r.header("x-fallback") == "yes" and r.json() == {"memos": [], "stale": True}
    assert r.header("x-request-id") and r.header("via") == "1.1 gwanmun"
    line = gw.log_for(r.header("x-request-id"))
    assert line["status"] == 200 and line["error"] == "circuit_open"


def test_static_fallback_when_no_target_is_healthy(gateway, ups):
    a = ups("a")
    svc, upstream = balanced("s", [a], fallback={**STATIC, "on": ["no_healthy_target"]})
    upstream["targets"][0]["weight"] = 0  # a target with weight 0 takes no traffic
    gw = gateway(config((svc, upstream)))
    r = gw.request("GET", "/s/x")
    assert r.status == 200 and r.header("x-fallback") == "yes" and a.hits == 0


def test_static_fallback_when_retries_are_exhausted(gateway, ups, refusing_port):
    a = ups("a", "fail")
    gw = gateway(config(
        (service("s", a.url, [route("s", ["/s"])], retry=FAST_RETRY, fallback=STATIC), None),
        (service("r", f"http://127.0.0.1:{refusing_port.port}", [route("r", ["/r"])], retries=1,
                 fallback=STATIC), None),
    ))
    r = gw.request("GET", "/s/x")
    assert r.status == 200 and r.header("x-fallback") == "yes" and a.hits == 3
    r = gw.request("GET", "/r/x")  # connection refused twice (Kong's retries), then the fallback
    assert r.status == 200 and r.header("x-fallback") == "yes"


def test_fallback_to_another_service_resends_the_request(gateway, ups, refusing_port, httpbin):
    gw = gateway(config(
        (service("primary", f"http://127.0.0.1:{refusing_port.port}", [route("p", ["/p"], strip_path=True)],
                 retries=0, fallback={"service": "backup"}), None),
        (service("backup", httpbin.url + "/anything", []), None),
    ))
    r = gw.request("POST", "/p/memo", body=b'{"text": "hi"}', headers={"Content-Type": "application/json"})
    assert r.status == 200
    body = r.json()
    assert body["url"].endswith("/anything/memo") and body["json"] == {"text": "hi"}
    assert gw.log_for(r.header("x-request-id"))["error"] == "retries_exhausted"


def test_fallback_applies_only_to_its_triggers(gateway, ups):
    up = ups("up", "fail")
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], retry=FAST_RETRY,
                                 fallback={**STATIC, "on": ["circuit_open"]}), None)))
    assert gw.request("GET", "/s/x").status == 503


# ----------------------------------------------------------------------------------------------------------------
# bulkheads
# ----------------------------------------------------------------------------------------------------------------
def test_bulkhead_limits_concurrency_queues_and_isolates(gateway, ups):
    slow, fast = ups("slow", "slow", delay=0.6), ups("fast")
    gw = gateway(config(
        (service("slow", slow.url, [route("slow", ["/slow"])],
                 bulkhead={"max_concurrent_requests": 2, "max_queue": 2, "queue_timeout": 1500}), None),
        (service("fast", fast.url, [route("fast", ["/fast"])]), None),
    ))
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def call() -> None:
        t = time.monotonic()
        r = gw.request("GET", "/slow/x")
        with lock:
            results.append((r.status, time.monotonic() - t, r.json().get("message")))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call) for _ in range(6)]
        time.sleep(0.2)
        t = time.monotonic()
        assert gw.request("GET", "/fast/x").status == 200
        assert time.monotonic() - t < 0.3  # another service is not held up by the slow one
        for f in futures:
            f.result()
    ok = [d for s, d, _ in results if s == 200]
    refused = [(d, m) for s, d, m in results if s == 503]
    assert len(ok) == 4 and len(refused) == 2, results  # 2 running + 2 queued; the other 2 refused at once
    assert all(d < 0.3 for d, _ in refused) and refused[0][1] == "The service is at its concurrency limit"
    assert sorted(ok)[-1] > 1.1  # the queued ones waited for a slot
    assert slow.peak == 2


def test_bulkhead_queue_timeout(gateway, ups):
    slow = ups("slow", "slow", delay=1.0)
    gw = gateway(config((service("slow", slow.url, [route("slow", ["/slow"])],
                                 bulkhead={"max_concurrent_requests": 1, "max_queue": 1, "queue_timeout": 200}),
                         None)))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(gw.request, "GET", "/slow/x")
        time.sleep(0.1)
        t = time.monotonic()
        r = gw.request("GET", "/slow/x")
        took = time.monotonic() - t
        assert first.result().status == 200
    assert r.status == 503 and 0.15 < took < 0.6
    assert r.json()["message"] == "Timed out waiting for the service's concurrency limit"
    assert gw.log_for(r.header("x-request-id"))["error"] == r.json()["message"]


def test_bulkhead_slot_is_freed_when_the_client_goes_away(gateway, ups, raw):
    up = ups("up", "hang")
    gw = gateway(config((service("s", up.url, [route("s", ["/s"])], read_timeout=60000,
                                 bulkhead={"max_concurrent_requests": 1}), None)))
    c = raw(gw.host, gw.port)
    c.send(b"GET /s/x HTTP/1.1\r\nHost: h\r\n\r\n")
    deadline = time.monotonic() + 5
    while up.hits < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.request("GET", "/s/x").status == 503  # the one slot is taken
    c.close()
    up.set("ok")
    deadline = time.monotonic() + 5
    while gw.request("GET", "/s/x").status != 200:
        assert time.monotonic() < deadline, "the slot was never given back"
        time.sleep(0.05)
