"""Rate limiting without HTTP (issue 6): the periods and their calendar windows, the three algorithms on a fake
clock, the shared-memory store across real forked processes (exactness, slot reuse and eviction, in-flight counts
of a dead worker, a lock left by a dead worker), the Redis store against the real Redis on 127.0.0.1:6379 (the same
answers as the local store, exact under concurrency, NOSCRIPT), its failures (a closed port, a server that never
answers), and the plugins on a fake context (config, headers, the 429, fault tolerance)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import socket
import time
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from tests.fixtures.redis import needs_redis
from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, Headers, Reply, Response, implements
from gwanmun.plugins.limit_conn import LimitConn
from gwanmun.plugins.rate_limiting import RateLimiting
from gwanmun.ratelimit import algorithms, shared, stats
from gwanmun.ratelimit.periods import MONTH, YEAR, Period, calendar_window, civil, days_from_civil
from gwanmun.ratelimit.redis_store import RedisSettings, RedisStore, StoreUnavailable

T0 = 1_700_000_040.0  # a minute boundary (1_700_000_040 = 60 * 28_333_334)
ALGOS = ["fixed", "sliding", "gcra"]




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------------
# periods
# ---------------------------------------------------------------------------------------------------------------------
def test_civil_round_trips_against_datetime():
    rnd = random.Random(6)
    for days in [0, 59, 60, 365, 789, 10957, 11016, 19782, 20147, 47481] + [rnd.randrange(-3000, 80000)
                                                                           for _ in range(2000)]:
        d = dt.date(1970, 1, 1) + dt.timedelta(days=days)
        assert civil(days) == (d.year, d.month, d.day)
        assert days_from_civil(d.year, d.month, d.day) == days


@pytest.mark.parametrize("stamp", ["2024-02-29T23:59:59", "2024-03-01T00:00:00", "2023-12-31T23:59:59.5",
                                   "2024-01-01T00:00:00", "2025-07-15T12:00:00"])
def test_calendar_windows_are_utc_months_and_years(stamp):
    t = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc)
    now = t.timestamp()
    idx, start, size = calendar_window(MONTH, now)
    first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = (first + dt.timedelta(days=32)).replace(day=1)
    assert (idx, start, size) == (t.year * 12 + t.month - 1, first.timestamp(), nxt.timestamp() - first.timestamp())
    idx, start, size = calendar_window(YEAR, now)
    jan = first.replace(month=1)
    assert (idx, start, size) == (t.year, jan.timestamp(), jan.replace(year=t.year + 1).timestamp() - jan.timestamp())
    p = Period("month", 10)
    assert p.window(now) == calendar_window(MONTH, now) and p.window(now) == calendar_window(MONTH, now)  # cached


def test_fixed_periods_align_on_the_epoch():
    assert Period("minute", 1).window(T0 + 59.9) == (T0 // 60, T0, 60.0)
    assert Period("day", 1).window(86400 * 3 + 5) == (3.0, 86400 * 3, 86400.0)


# ---------------------------------------------------------------------------------------------------------------------
# algorithms on a fake clock (through a private table, so the store's bookkeeping is covered too)
# ---------------------------------------------------------------------------------------------------------------------
class Limiter:
    def __init__(self, algo: str, **limits: float) -> None:
        self.table = shared.Table(slots=1024, conn_slots=256, positions=1, shared=False)
        self.step = algorithms.ALGORITHMS[algo]
        self.periods = tuple(Period(name, v, salt=i * 7919) for i, (name, v) in enumerate(limits.items()))

    def hit(self, now: float, key: str = "k"):
        return self.table.hit(hash(key), self.step, self.periods, now)


def admitted(lim: Limiter, now: float, n: int, key: str = "k") -> int:
    return sum(1 for _ in range(n) if lim.hit(now, key)[0])


def test_fixed_window_admits_exactly_the_limit_per_window():
    lim = Limiter("fixed", minute=3)
    ok, retry, [(rem, reset)] = lim.hit(T0 + 10)
    assert ok and rem == 2 and reset == 50
    assert admitted(lim, T0 + 20, 5) == 2
    ok, retry, [(rem, reset)] = lim.hit(T0 + 30)
    assert not ok and retry == 30 and rem == 0 and reset == 30
    assert admitted(lim, T0 + 60, 5) == 3  # a new window
    assert admitted(lim, T0 + 119.99, 5) == 0


def test_sliding_window_weighs_the_previous_window():
    lim = Limiter("sliding", minute=10)
    assert admitted(lim, T0 + 30, 20) == 10
    ok, retry, _ = lim.hit(T0 + 30)
    assert not ok and retry == pytest.approx(30 + 6)  # next window, once 10 * (1 - e/60) + 1 <= 10: e = 6
    assert not lim.hit(T0 + 65.9)[0]
    assert lim.hit(T0 + 66.01)[0]
    # at T0 + 90 the previous window weighs 0.5: 5 + a + 1 <= 10 while a <= 4 (one was admitted at 66)
    assert admitted(lim, T0 + 90, 10) == 4
    assert admitted(lim, T0 + 180, 20) == 10  # two windows later: nothing carried over


def test_gcra_is_a_bucket_of_limit_refilled_every_interval():
    lim = Limiter("gcra", minute=10)
    assert admitted(lim, T0, 15) == 10
    ok, retry, [(rem, reset)] = lim.hit(T0)
    assert not ok and retry == pytest.approx(6) and rem == 0 and reset == pytest.approx(60)
    assert not lim.hit(T0 + 5.99)[0]
    ok, _, [(rem, _)] = lim.hit(T0 + 6.0)
    assert ok and rem == 0
    assert admitted(lim, T0 + 60 + 6, 20) == 10  # idle for a window: the whole burst again


@pytest.mark.parametrize("algo", ALGOS)
def test_retry_after_is_when_a_request_is_admitted_again(algo):
    rnd = random.Random(algo)
    lim = Limiter(algo, minute=7)
    now = T0 + 3
    checked = 0
    for _ in range(400):
        now += rnd.choice([0.0, 0.3, 1.7, 5.0])
        ok, retry, _ = lim.hit(now)
        if not ok:
            checked += 1
            if retry > 0.05:
                assert not lim.hit(now + retry - 0.02)[0], (now, retry)
            assert lim.hit(now + retry + 0.001)[0], (now, retry)
            now += retry + 0.001
    assert checked > 20


@pytest.mark.parametrize("algo", ALGOS)
def test_every_period_must_admit_and_a_refusal_counts_nothing(algo):
    lim = Limiter(algo, second=2, minute=3)
    assert admitted(lim, T0 + 1, 5) == 2
    ok, _, [(rem_s, _), (rem_m, _)] = lim.hit(T0 + 1)
    assert not ok and rem_s == 0 and rem_m == 1  # the minute still has one: the refused request was not counted
    assert admitted(lim, T0 + 2.5, 5) == 1  # the second has room again, the minute only one
    ok, retry, [(rem_s, _), (rem_m, _)] = lim.hit(T0 + 2.6)
    assert not ok and rem_m == 0 and retry > 1


def test_keys_are_independent():
    lim = Limiter("fixed", hour=2)
    assert [admitted(lim, T0, 5, key) for key in ("a", "b", "c")] == [2, 2, 2]


# ---------------------------------------------------------------------------------------------------------------------
# the shared table: slots, expiry, eviction
# ---------------------------------------------------------------------------------------------------------------------
def test_stale_slots_are_reused_and_memory_is_bounded():
    t = shared.Table(slots=8, conn_slots=8, positions=1, stripes=1, shared=False)  # one probe range: 8 slots
    size = len(t.buf)
    periods = (Period("second", 1, salt=0),)
    before = stats["evictions"]
    for i in range(8):  # fill every slot with a live counter (same home, distinct keys)
        assert t.hit(i << 40, algorithms.fixed, periods, T0)[0]
    assert stats["evictions"] == before
    assert t.hit(99 << 40, algorithms.fixed, periods, T0)[0]  # full of live counters: the oldest is evicted
    assert stats["evictions"] == before + 1
    for i in range(100, 108):  # a second later every counter is stale: reused, nothing evicted
        assert t.hit(i << 40, algorithms.fixed, periods, T0 + 1.5)[0]
    assert stats["evictions"] == before + 1 and len(t.buf) == size
    assert t.peek(100 << 40, 0) is not None and t.peek(3 << 40, 0) is None


def test_a_key_found_after_a_reused_slot_keeps_its_count():
    t = shared.Table(slots=8, conn_slots=8, positions=1, stripes=1, shared=False)
    periods = (Period("hour", 5, salt=0),)
    short = (Period("second", 5, salt=0),)
    assert t.hit(1 << 40, algorithms.fixed, short, T0)[0]  # home slot, expires in a second
    for _ in range(3):
        assert t.hit(2 << 40, algorithms.fixed, periods, T0)[0]  # probes past it
    assert t.hit(3 << 40, algorithms.fixed, periods, T0 + 2)[0]  # takes the stale home slot
    ok, _, [(rem, _)] = t.hit(2 << 40, algorithms.fixed, periods, T0 + 2)
    assert ok and rem == 1  # still found, with its 3 + 1


# ---------------------------------------------------------------------------------------------------------------------
# the shared table across real processes
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def node():
    """A node's shared table, as the supervisor makes it; children forked from here share it."""
    saved = shared._shared
    table = shared.create(workers=4, slots=1 << 12, conn_slots=1 << 10)
    yield table
    shared._shared = saved


def _hammer(algo: str, n: int, now: float) -> int:
    t = shared.table()
    periods = (Period("hour", 10000, salt=5),)
    step = algorithms.ALGORITHMS[algo]
    return sum(1 for _ in range(n) if t.hit(12345, step, periods, now)[0])


@pytest.mark.parametrize("algo", ALGOS)
def test_four_processes_hammering_one_key_admit_exactly_the_limit(node, algo):
    start = multiprocessing.get_context("fork").Event()
    children = []
    for _ in range(4):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: wait for the others, then count as fast as it can
            try:
                start.wait(10)
                os.write(w, b"%d" % _hammer(algo, 4000, T0 + 30))
            finally:
                os._exit(0)
        os.close(w)
        children.append((pid, r))
    start.set()
    counts = []
    for pid, r in children:
        counts.append(int(os.read(r, 32) or b"-1"))
        os.close(r)
        os.waitpid(pid, 0)
    assert sum(counts) == 10000, counts  # 16,000 tries, exactly the limit admitted
    assert sum(1 for c in counts if c) >= 3, counts


def test_in_flight_shares_of_a_dead_worker_are_taken_back(node):
    h = 4242
    pid = os.fork()
    if pid == 0:  # a worker that dies with three requests in flight
        code = 0 if all(node.enter(h, 10) >= 0 for _ in range(3)) else 1
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert node.in_flight(h) == 3
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # its replacement: forking claims a position, taking back the dead one's
        os.write(w, b"%d" % node.in_flight(h))
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 16) == b"0"
    os.close(r)
    os.close(w)
    assert node.in_flight(h) == 0


def test_limit_conn_counts(node):
    h = 777
    slots = [node.enter(h, 2) for _ in range(3)]
    assert slots[0] >= 0 and slots[1] >= 0 and slots[2] == -1 and node.in_flight(h) == 2
    node.leave(slots[0])
    assert node.in_flight(h) == 1 and node.enter(h, 2) >= 0


def test_a_lock_left_by_a_dead_process_is_recovered(node):
    stripe = 3
    pid = os.fork()
    if pid == 0:
        node.locks[stripe].acquire()
        node.q[stripe] = os.getpid()
        os._exit(0)  # dies holding it
    os.waitpid(pid, 0)
    before = stats["lock_recovered"]
    t = time.monotonic()
    res = node.hit(stripe, algorithms.fixed, (Period("hour", 5, salt=1),), T0)
    assert res is not None and res[0]
    assert stats["lock_recovered"] == before + 1 and time.monotonic() - t < 2 * shared.LOCK_WAIT + 0.5
    assert node.hit(stripe, algorithms.fixed, (Period("hour", 5, salt=1),), T0)[0]  # released again


# ---------------------------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------------------------
def run(coro):
    return asyncio.run(coro)


def keys_for(prefix: str, periods) -> list[str]:
    return [f"test:{prefix}:{{k}}:{p.name}" for p in periods]


@needs_redis
@pytest.mark.parametrize("algo", ALGOS)
def test_redis_gives_the_local_answers(algo):
    rnd = random.Random(algo + "redis")
    periods = (Period("second", 3, salt=1), Period("minute", 8, salt=2))
    local = Limiter(algo, second=3, minute=8)
    prefix = uuid.uuid4().hex
    store = RedisStore(RedisSettings("127.0.0.1", 6379, timeout=1.0))

    async def go():
        now = T0 + 0.25
        try:
            for _ in range(120):
                now += rnd.choice([0.0, 0.0, 0.1, 0.45, 2.0])
                want = local.hit(now)
                got = await store.hit(keys_for(prefix, periods), algo, periods, now=now)
                assert got[0] == want[0], (now, got, want)
                assert got[1] == pytest.approx(want[1], abs=0.002)
                for (gr, gt), (wr, wt) in zip(got[2], want[2]):
                    assert gr == int(wr) and gt == pytest.approx(wt, abs=0.002), (now, got, want)
        finally:
            await store.aclose()

    run(go())


@needs_redis
def test_redis_calendar_windows_match():
    store = RedisStore(RedisSettings("127.0.0.1", 6379, timeout=1.0))
    prefix = uuid.uuid4().hex

    async def go():
        try:
            for stamp in ("2024-02-29T23:59:59", "2024-03-01T00:00:00", "2023-12-31T23:59:59"):
                now = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc).timestamp()
                for name, kind in (("month", MONTH), ("year", YEAR)):
                    p = (Period(name, 5),)
                    ok, _, [(rem, reset)] = await store.hit([f"test:{prefix}:{stamp}:{name}"], "fixed", p, now=now)
                    _, start, size = calendar_window(kind, now)
                    assert ok and rem == 4 and reset == pytest.approx(start + size - now, abs=0.002)
        finally:
            await store.aclose()

    run(go())


@needs_redis
@pytest.mark.parametrize("algo", ALGOS)
def test_redis_is_exact_under_concurrency(algo):
    periods = (Period("hour", 100, salt=1),)
    prefix = uuid.uuid4().hex
    stores = [RedisStore(RedisSettings("127.0.0.1", 6379, timeout=2.0)) for _ in range(3)]  # three "nodes"

    async def go():
        try:
            now = time.time()
            results = await asyncio.gather(*[stores[i % 3].hit(keys_for(prefix, periods), algo, periods, now=now)
                                             for i in range(300)])
        finally:
            for s in stores:
                await s.aclose()
        return sum(1 for r in results if r[0])

    assert run(go()) == 100


@needs_redis
def test_redis_reloads_a_flushed_script():
    import redis

    periods = (Period("minute", 5),)
    prefix = uuid.uuid4().hex
    store = RedisStore(RedisSettings("127.0.0.1", 6379, timeout=1.0))
    redis.Redis(host="127.0.0.1", port=6379).script_flush()

    async def go():
        try:
            return [(await store.hit(keys_for(prefix, periods), "fixed", periods))[0] for _ in range(7)]
        finally:
            await store.aclose()

    assert run(go()) == [True] * 5 + [False] * 2


def test_a_closed_port_fails_fast_and_pauses():
    store = RedisStore(RedisSettings("127.0.0.1", free_port(), timeout=0.05))
    periods = (Period("minute", 5),)

    async def go():
        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.hit(["k"], "fixed", periods)
        first = time.monotonic() - t
        with pytest.raises(StoreUnavailable):
            await store.hit(["k"], "fixed", periods)  # within the pause: not even tried
        await store.aclose()
        return first

    assert run(go()) < 0.5
    assert store.errors == 1 and store.skipped == 1


def test_a_redis_that_never_answers_times_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)  # accepts (in the kernel), never answers
    try:
        store = RedisStore(RedisSettings("127.0.0.1", srv.getsockname()[1], timeout=0.05))

        async def go():
            t = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.hit(["k"], "fixed", (Period("minute", 5),))
            await store.aclose()
            return time.monotonic() - t

        assert run(go()) < 0.5
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------------------------------------
# the plugins on a fake context
# ---------------------------------------------------------------------------------------------------------------------
def make(cls, cfg):
    return cls(cls.Config.model_validate(cfg), BuildEnv())


def ctx(client_ip="10.0.0.1", headers=(), path="/x", consumer=None, credential=None):
    c = Ctx(ex=None, method="GET", path=path, query=b"", client_ip=client_ip,
            headers=Headers([(n.encode(), v.encode()) for n, v in headers]),
            route=SimpleNamespace(name="r", id=None), service=SimpleNamespace(name="s", id=None),
            request_id="rid", started=0.0)
    c.consumer, c.credential = consumer, credential
    return c


def fields(c) -> dict[str, str]:
    """The response fields the access phase gave (Ctx.add_response_lines), as a client would read them."""
    resp = Response(200, Headers([]))
    resp.headers.append_lines(c.response_lines)
    return dict(resp.headers.items())


CONFIG_ERRORS = [
    ("no-limit", {}, "at least one of these fields must be non-empty"),
    ("order", {"minute": 10, "hour": 5}, "The limit for hour(5.0) cannot be lower than the limit for minute(10.0)"),
    ("negative", {"minute": 0}, "greater than 0"),
    ("redis-host", {"minute": 1, "policy": "redis"}, "redis.host: required"),
    ("header", {"minute": 1, "limit_by": "header"}, "header_name: required"),
    ("path", {"minute": 1, "limit_by": "path"}, "path: required"),
    ("cluster", {"minute": 1, "policy": "cluster"}, "policy 'cluster'"),
    ("algorithm", {"minute": 1, "algorithm": "leaky"}, "algorithm"),
    ("sync-rate", {"minute": 1, "sync_rate": 1}, "sync_rate can only be used with the redis policy"),
    ("unknown", {"minute": 1, "minutes": 1}, "minutes"),
]


@pytest.mark.parametrize("cfg,message", [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors(cfg, message):
    with pytest.raises(ValidationError) as e:
        RateLimiting.Config.model_validate(cfg)
    assert message in str(e.value), str(e.value)


def test_kong_flat_redis_fields_fold_into_the_redis_record():
    cfg = RateLimiting.Config.model_validate({
        "minute": 5, "policy": "redis", "redis_host": "10.1.1.1", "redis_port": 6380, "redis_timeout": 200,
        "redis_database": 2, "redis_password": None, "redis": {"host": "ignored", "username": "u"},
        "sync_rate": -1, "hour": None})
    assert (cfg.redis.host, cfg.redis.port, cfg.redis.timeout, cfg.redis.database, cfg.redis.username) == (
        "10.1.1.1", 6380, 200, 2, "u")
    assert cfg.algorithm == "sliding" and cfg.limit_by == "consumer" and cfg.fault_tolerant


def test_headers_and_the_429():
    p = make(RateLimiting, {"minute": 2, "hour": 10, "limit_by": "ip", "algorithm": "fixed"})
    c = ctx(client_ip=f"10.9.{random.randrange(255)}.{random.randrange(255)}")
    assert p.access(c) is None
    f = fields(c)
    assert f["RateLimit-Policy"] == '"minute";q=2;w=60, "hour";q=10;w=3600'
    assert f["X-RateLimit-Limit-Minute"] == "2" and f["X-RateLimit-Remaining-Minute"] == "1"
    assert f["X-RateLimit-Limit-Hour"] == "10" and f["X-RateLimit-Remaining-Hour"] == "9"
    assert f["RateLimit"].startswith('"minute";r=1;t=') and ', "hour";r=9;t=' in f["RateLimit"]
    assert f["RateLimit-Limit"] == "2" and f["RateLimit-Remaining"] == "1" and 1 <= int(f["RateLimit-Reset"]) <= 60
    assert p.access(ctx(client_ip=c.client_ip)) is None
    reply = p.access(ctx(client_ip=c.client_ip))
    assert isinstance(reply, Reply) and reply.status == 429 and reply.error
    assert reply.body == {"message": "API rate limit exceeded"}
    h = dict(reply.headers)
    assert 1 <= int(h["Retry-After"]) <= 60 and h["X-RateLimit-Remaining-Minute"] == "0"
    assert h["X-RateLimit-Remaining-Hour"] == "8" and h["RateLimit-Remaining"] == "0"


def test_hidden_headers_and_a_custom_error():
    p = make(RateLimiting, {"second": 1, "limit_by": "ip", "hide_client_headers": True, "error_code": 503,
                            "error_message": "slow down", "algorithm": "fixed"})
    assert not implements(p, "header_filter")  # not even in the chain
    ip = f"10.8.{random.randrange(255)}.{random.randrange(255)}"
    replies = [p.access(ctx(client_ip=ip)) for _ in range(3)]
    refused = [r for r in replies if r is not None]
    assert refused and all(r.status == 503 and r.body == {"message": "slow down"} for r in refused)
    assert all([n for n, _ in r.headers] == ["Retry-After"] for r in refused)


LIMIT_BY = [
    ("ip", {}, dict(client_ip="1.1.1.1"), "1.1.1.1"),
    ("consumer", {}, dict(consumer=Consumer("c-1", "alice")), "c-1"),
    ("consumer", {}, dict(credential=Credential("k-1", "k-1", "key-auth")), "k-1"),
    ("consumer", {}, dict(client_ip="2.2.2.2"), "2.2.2.2"),
    ("credential", {}, dict(consumer=Consumer("c-1"), credential=Credential("k-2", "k", "jwt")), "k-2"),
    ("service", {}, {}, "s"),
    ("header", {"header_name": "X-Tenant"}, dict(headers=[("x-tenant", "acme")]), "acme"),
    ("header", {"header_name": "X-Tenant"}, dict(client_ip="3.3.3.3"), "3.3.3.3"),
    ("path", {"path": "/x"}, dict(path="/x"), "/x"),
    ("path", {"path": "/x"}, dict(path="/y", client_ip="4.4.4.4"), "4.4.4.4"),
    ("consumer-group", {}, dict(consumer=Consumer("c-1", groups=("gold", "beta"))), "gold"),
]


@pytest.mark.parametrize("limit_by,extra,request_kw,key", LIMIT_BY, ids=[f"{c[0]}-{c[3]}" for c in LIMIT_BY])
def test_limit_by(limit_by, extra, request_kw, key):
    p = make(RateLimiting, {"minute": 1, "limit_by": limit_by, **extra})
    assert p.identify(ctx(**request_kw)) == key


def test_redis_policy_fails_open_or_closed_and_never_with_401_or_403():
    port = free_port()
    for tolerant in (True, False):
        p = make(RateLimiting, {"minute": 5, "policy": "redis", "fault_tolerant": tolerant,
                                "redis": {"host": "127.0.0.1", "port": port, "timeout": 50}})
        before = dict(stats)

        async def go():
            out = []
            for _ in range(3):
                t = time.monotonic()
                out.append((await p.access(ctx()), time.monotonic() - t))
            return out

        results = asyncio.run(go())
        assert all(dt_ < 0.5 for _, dt_ in results)
        if tolerant:
            assert all(r is None for r, _ in results)
            assert stats["fail_open"] == before["fail_open"] + 3
        else:
            assert all(r.status == 500 and r.body == {"message": "An unexpected error occurred"}
                       for r, _ in results)
            assert stats["fail_closed"] == before["fail_closed"] + 3
        assert stats["redis_errors"] == before["redis_errors"] + 3


def test_the_local_access_is_synchronous_and_the_redis_one_a_coroutine():
    local = make(RateLimiting, {"minute": 5})
    assert local.access(ctx()) is None
    red = make(RateLimiting, {"minute": 5, "policy": "redis", "redis": {"host": "127.0.0.1", "port": free_port()}})
    coro = red.access(ctx())
    assert asyncio.iscoroutine(coro)
    coro.close()


def test_limit_conn_plugin_releases_in_the_log_phase():
    p = make(LimitConn, {"conn": 2, "key": "ip"})
    ip = f"10.7.{random.randrange(255)}.{random.randrange(255)}"
    a, b, c = ctx(client_ip=ip), ctx(client_ip=ip), ctx(client_ip=ip)
    assert p.access(a) is None and p.access(b) is None
    refused = p.access(c)
    assert refused.status == 503 and refused.body == {"message": "Too many requests in flight"}
    p.log(c)  # a refused request holds nothing
    p.log(a)
    p.log(a)  # once per request, however often
    assert p.access(ctx(client_ip=ip)) is None
    assert p.access(ctx(client_ip=ip)).status == 503


def test_limits_use_a_stable_id_not_the_object():
    cfg = {"minute": 3, "limit_by": "ip", "algorithm": "fixed"}
    ip = f"10.6.{random.randrange(255)}.{random.randrange(255)}"
    first = make(RateLimiting, cfg)
    assert first.access(ctx(client_ip=ip)) is None and first.access(ctx(client_ip=ip)) is None
    second = make(RateLimiting, cfg)  # a reload builds a new instance: same counters
    assert second.access(ctx(client_ip=ip)) is None
    assert second.access(ctx(client_ip=ip)).status == 429
    other = make(RateLimiting, {**cfg, "limit_by": "consumer"})  # counts something else: its own counters
    assert other.access(ctx(client_ip=ip)) is None


def test_json_body_of_the_reply_has_no_surprises():
    p = make(RateLimiting, {"second": 1, "limit_by": "ip", "algorithm": "gcra"})
    ip = f"10.5.{random.randrange(255)}.{random.randrange(255)}"
    p.access(ctx(client_ip=ip))
    r = p.access(ctx(client_ip=ip))
    assert json.loads(json.dumps(r.body)) == {"message": "API rate limit exceeded"}
