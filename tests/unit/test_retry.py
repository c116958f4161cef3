"""Retry policy: what is retried, the budget under load, jitter bounds, target exclusion, body buffering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwanmun.resilience.retry import (
    NO_RETRY_BODY,
    NO_RETRY_BUDGET,
    NO_RETRY_EXHAUSTED,
    NO_RETRY_METHOD,
    NO_RETRY_OUTCOME,
    RETRY,
    BodyBuffer,
    RetryBudget,
    RetryPolicy,
    RetrySettings,
    full_jitter,
    pick_excluding,
)


def policy(**kw) -> RetryPolicy:
    return RetryPolicy(RetrySettings(**kw), random.Random(1))


def test_statuses_and_timeouts():
    p = policy()
    assert p.decide(0.0, "GET", 0, 503, False, True) == RETRY
    assert p.decide(0.0, "GET", 0, 500, False, True) == NO_RETRY_OUTCOME
    assert p.decide(0.0, "GET", 0, 0, True, True) == RETRY
    p = policy(on_timeout=False, statuses=frozenset({500}))
    assert p.decide(0.0, "GET", 0, 0, True, True) == NO_RETRY_OUTCOME
    assert p.decide(0.0, "GET", 0, 500, False, True) == RETRY


def test_idempotent_only_unless_opted_in():
    p = policy()
    for m in ("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"):
        assert p.decide(0.0, m, 0, 502, False, True) == RETRY
    for m in ("POST", "PATCH", "CONNECT"):
        assert p.decide(0.0, m, 0, 502, False, True) == NO_RETRY_METHOD
    assert policy(retry_non_idempotent=True).decide(0.0, "POST", 0, 502, False, True) == RETRY


def test_max_retries_and_body():
    p = policy(max_retries=2)
    assert p.decide(0.0, "PUT", 1, 502, False, True) == RETRY
    assert p.decide(0.0, "PUT", 2, 502, False, True) == NO_RETRY_EXHAUSTED
    assert p.decide(0.0, "PUT", 0, 502, False, False) == NO_RETRY_BODY


def test_budget_is_not_spent_on_refusals():
    p = policy(budget_min_retries_per_sec=0.1, budget_ttl=10.0)  # reserve: 1 token
    assert p.decide(0.0, "POST", 0, 502, False, True) == NO_RETRY_METHOD
    assert p.decide(0.0, "GET", 0, 502, False, True) == RETRY
    assert p.decide(0.0, "GET", 0, 502, False, True) == NO_RETRY_BUDGET


def test_budget_limits_retries_to_20_percent_under_load():
    b = RetryBudget(ttl=10.0, min_retries_per_sec=0.0, percent_can_retry=0.2)
    retries = 0
    now = 0.0
    for i in range(10_000):  # 1000 req/s for 10 s, every request wants a retry
        now = i * 0.001
        b.deposit(now)
        if b.try_withdraw(now):
            retries += 1
    assert 1990 <= retries <= 2000


def test_budget_reserve_and_expiry():
    b = RetryBudget(ttl=10.0, min_retries_per_sec=1.0, percent_can_retry=0.2)
    got = sum(b.try_withdraw(0.0) for _ in range(50))
    assert got == 10  # the reserve: 1/s over 10 s
    assert not b.try_withdraw(5.0)
    assert b.try_withdraw(10.5)  # the first withdrawals expired with the ttl
    for _ in range(100):
        b.deposit(11.0)
    assert b.balance(11.0) == pytest.approx(10 + 20 - 1)
    assert b.balance(30.0) == pytest.approx(10)  # everything expired


def test_budget_policy_over_time_steady_state():
    p = policy(budget_ttl=10.0, budget_min_retries_per_sec=10.0, max_retries=3)
    rng = random.Random(7)
    requests = retries = 0
    for i in range(60_000):  # 1000 req/s for 60 s, half of the first tries fail
        now = i * 0.001
        p.request_started(now)
        requests += 1
        if rng.random() < 0.5:
            n = 0
            while p.decide(now, "GET", n, 503, False, True) == RETRY:
                retries += 1
                n += 1
    # 20% of requests plus the reserve (10/s) per ttl window
    assert retries <= 0.2 * requests + 10 * 60 + 200
    assert retries >= 0.2 * requests * 0.9


@given(base=st.floats(0.001, 1.0), cap=st.floats(0.001, 10.0), n=st.integers(1, 200), u=st.floats(0.0, 0.999999))
def test_full_jitter_bounds(base, cap, n, u):
    d = full_jitter(base, cap, n, u)
    assert 0.0 <= d <= min(cap, base * 2 ** (n - 1)) + 1e-12


def test_backoff_grows_and_caps():
    p = policy(backoff_base=0.1, backoff_max=1.0)
    samples = [p.backoff(1) for _ in range(2000)]
    assert max(samples) <= 0.1 and min(samples) >= 0.0 and max(samples) > 0.09
    assert sum(samples) / len(samples) == pytest.approx(0.05, rel=0.1)  # full jitter: mean is half the ceiling
    assert max(p.backoff(3) for _ in range(2000)) <= 0.4
    assert max(p.backoff(30) for _ in range(2000)) <= 1.0


class T:
    def __init__(self, label: str) -> None:
        self.label = label


def test_pick_excluding():
    targets = [T("a"), T("b"), T("c")]
    it = iter(targets * 3)
    pick = lambda: next(it)  # noqa: E731 - round-robin stand-in
    got = pick_excluding(pick, [targets[0], targets[1]], 3)
    assert got is targets[2]
    # every target already tried: the last pick is returned (retry the same rather than fail)
    it2 = iter(targets * 3)
    assert pick_excluding(lambda: next(it2), targets, 3) is not None
    assert pick_excluding(lambda: None, [], 3) is None


def test_body_buffer_limit():
    b = BodyBuffer(10)
    assert b.add(b"12345") and b.add(b"67890")
    assert b.replayable and b"".join(b.chunks) == b"1234567890"
    assert not b.add(b"x")
    assert not b.replayable and b.chunks == []
    assert not b.add(b"y")


def test_reconfigure_keeps_budget_unless_budget_settings_change():
    p = policy(budget_min_retries_per_sec=0.1)  # reserve of 1 token
    assert p.decide(0.0, "GET", 0, 502, False, True) == RETRY
    budget = p.budget
    p.reconfigure(RetrySettings(max_retries=5, budget_min_retries_per_sec=0.1))
    assert p.budget is budget and p.settings.max_retries == 5
    assert p.decide(0.0, "GET", 0, 502, False, True) == NO_RETRY_BUDGET
    p.reconfigure(RetrySettings(max_retries=5, budget_min_retries_per_sec=0.2))
    assert p.budget is not budget
