"""Circuit breaker: every transition of the table, the windows, slow calls, minimum calls, half-open permits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwanmun.resilience.breaker import (
    A_NONE,
    CLOSED,
    COUNT_BASED,
    E_EXCEEDED,
    E_HALF_OPEN_EXPIRED,
    E_PROBES_PASSED,
    E_RECORDED,
    E_RESET,
    E_WAIT_ELAPSED,
    EVENT_NAMES,
    HALF_OPEN,
    OPEN,
    STATE_NAMES,
    TIME_BASED,
    TRANSITIONS,
    BreakerRegistry,
    BreakerSettings,
    CircuitBreaker,
    retry_after_header,
    transition_fields,
)

def small() -> BreakerSettings:
    return BreakerSettings(window_size=4, minimum_calls=4, failure_rate_threshold=50.0, wait_in_open=10.0,
                           permitted_in_half_open=2, slow_call_duration=1.0, slow_call_rate_threshold=100.0)


SMALL = small()


def make(s: BreakerSettings = SMALL) -> tuple[CircuitBreaker, list[tuple[str, str, str]]]:
    log: list[tuple[str, str, str]] = []

    def hook(b: CircuitBreaker, old: int, new: int, event: int, now: float) -> None:
        log.append((STATE_NAMES[old], STATE_NAMES[new], EVENT_NAMES[event]))

    return CircuitBreaker(s, "svc", hook), log


def trip(b: CircuitBreaker, now: float = 0.0) -> None:
    for _ in range(4):
        b.record(now, False, 0.01)
    assert b.state == OPEN


def to_half_open(b: CircuitBreaker) -> float:
    trip(b, 0.0)
    assert b.allow(10.0)
    assert b.state == HALF_OPEN
    return 10.0


# -- the table itself ---------------------------------------------------------------------------------------------
def test_table_is_complete():
    assert len(TRANSITIONS) == 3
    for row in TRANSITIONS:
        assert len(row) == len(EVENT_NAMES)
        for new, action in row:
            assert new in (CLOSED, OPEN, HALF_OPEN)


EXPECTED = {
    (CLOSED, E_RECORDED): CLOSED,
    (CLOSED, E_EXCEEDED): OPEN,
    (CLOSED, E_RESET): CLOSED,
    (OPEN, E_WAIT_ELAPSED): HALF_OPEN,
    (OPEN, E_RESET): CLOSED,
    (OPEN, E_RECORDED): OPEN,
    (HALF_OPEN, E_RECORDED): HALF_OPEN,
    (HALF_OPEN, E_EXCEEDED): OPEN,
    (HALF_OPEN, E_PROBES_PASSED): CLOSED,
    (HALF_OPEN, E_HALF_OPEN_EXPIRED): OPEN,
    (HALF_OPEN, E_RESET): CLOSED,
}


@pytest.mark.parametrize("state", [CLOSED, OPEN, HALF_OPEN])
@pytest.mark.parametrize("event", range(len(EVENT_NAMES)))
def test_every_table_entry_through_fire(state, event):
    b, log = make()
    b.state = state
    gen = b.generation
    new = b.fire(event, 5.0)
    expected = EXPECTED.get((state, event), state)
    assert new == expected == b.state
    action = TRANSITIONS[state][event][1]
    if action == A_NONE:
        assert log == [] and b.generation == gen
    else:
        assert log == [(STATE_NAMES[state], STATE_NAMES[expected], EVENT_NAMES[event])]
        assert b.generation == gen + 1


# -- closed -> open ------------------------------------------------------------------------------------------------
def test_closed_stays_closed_below_minimum_calls():
    b, log = make()
    for _ in range(3):
        b.record(0.0, False, 0.01)
    assert b.state == CLOSED and b.failure_rate() == -1.0 and log == []
    b.record(0.0, False, 0.01)
    assert b.state == OPEN
    assert log == [("closed", "open", "threshold_exceeded")]


def test_failure_rate_threshold_is_inclusive():
    b, _ = make()
    for ok in (True, True, False):
        b.record(0.0, ok, 0.01)
    assert b.state == CLOSED
    b.record(0.0, False, 0.01)  # 2 of 4 = 50% >= 50%
    assert b.state == OPEN


def test_below_threshold_stays_closed():
    b, _ = make()
    for ok in (True, True, True, False):
        b.record(0.0, ok, 0.01)
    assert b.state == CLOSED and b.failure_rate() == 25.0


def test_count_window_evicts_oldest():
    b, _ = make()
    for ok in (False, True, True, True, True):  # the failure falls out of the 4-call window
        b.record(0.0, ok, 0.01)
    assert b.calls == 4 and b.failures == 0
    b.record(0.0, False, 0.01)
    b.record(0.0, False, 0.01)  # window: T T F F -> 50%
    assert b.state == OPEN


def test_minimum_calls_capped_by_count_window():
    b, _ = make(BreakerSettings(window_size=3, minimum_calls=100, permitted_in_half_open=1))
    for _ in range(3):
        b.record(0.0, False, 0.01)
    assert b.state == OPEN


def test_slow_call_rate_opens():
    s = BreakerSettings(window_size=4, minimum_calls=4, slow_call_duration=1.0, slow_call_rate_threshold=75.0,
                        permitted_in_half_open=1)
    b, log = make(s)
    b.record(0.0, True, 1.0)  # exactly the threshold: not slow
    for _ in range(2):
        b.record(0.0, True, 1.5)
    assert b.state == CLOSED and b.slow == 2
    b.record(0.0, True, 2.0)  # 3 of 4 slow = 75%
    assert b.state == OPEN and log[-1][2] == "threshold_exceeded"


def test_slow_failure_counts_for_both_rates():
    b, _ = make()
    b.record(0.0, False, 5.0)
    assert b.failures == 1 and b.slow == 1


# -- time-based window ----------------------------------------------------------------------------------------------
def test_time_window_expiry_with_fake_clock():
    s = BreakerSettings(window_type=TIME_BASED, window_size=10, minimum_calls=4, permitted_in_half_open=1)
    b, _ = make(s)
    for t in (0.0, 1.0, 2.0):
        b.record(t, False, 0.01)
    assert b.calls == 3
    # 11.5 s: the calls of seconds 0 and 1 have left the 10-second window
    b.record(11.5, True, 0.01)
    assert b.calls == 2 and b.failures == 1 and b.state == CLOSED
    b.expire(100.0)
    assert b.calls == 0 and b.failures == 0


def test_time_window_opens_within_window():
    s = BreakerSettings(window_type=TIME_BASED, window_size=10, minimum_calls=4, permitted_in_half_open=1)
    b, _ = make(s)
    for t in (0.0, 3.0, 6.0, 9.9):
        b.record(t, False, 0.01)
    assert b.state == OPEN


def test_time_window_minimum_not_capped():
    s = BreakerSettings(window_type=TIME_BASED, window_size=2, minimum_calls=5, permitted_in_half_open=1)
    b, _ = make(s)
    for _ in range(4):
        b.record(0.5, False, 0.01)
    assert b.state == CLOSED
    b.record(0.5, False, 0.01)
    assert b.state == OPEN


# -- open ------------------------------------------------------------------------------------------------------------
def test_open_refuses_and_retry_after_counts_down():
    b, _ = make()
    trip(b, 0.0)
    assert not b.allow(3.0)
    assert b.retry_after(3.0) == pytest.approx(7.0)
    assert retry_after_header(b.retry_after(3.0)) == 7
    assert retry_after_header(b.retry_after(9.5)) == 1
    assert b.state == OPEN


def test_open_ignores_late_records():
    b, log = make()
    permit = b.acquire(0.0)
    trip(b, 0.0)
    b.record(1.0, True, 0.01, permit)  # a call permitted before opening
    b.record(1.0, True, 0.01)  # and one without a permit
    assert b.state == OPEN and len(log) == 1


def test_wait_elapsed_moves_to_half_open_lazily():
    b, log = make()
    trip(b, 0.0)
    assert b.tick(9.99) == OPEN
    assert b.retry_after(10.0) == 0.0  # reading it applies the clock
    assert b.state == HALF_OPEN
    assert log[-1] == ("open", "half_open", "wait_elapsed")


# -- half-open -------------------------------------------------------------------------------------------------------
def test_half_open_permits_exactly_n():
    b, _ = make()
    now = to_half_open(b)  # that allow() used one of the 2 permits
    assert b.allow(now)
    assert not b.allow(now)
    assert b.retry_after(now) == 1.0


def test_half_open_probes_pass_then_closed_with_empty_window():
    b, log = make()
    now = to_half_open(b)
    p = b.acquire(now)
    b.record(now, True, 0.01, p)
    assert b.state == HALF_OPEN
    b.record(now, True, 0.01, p)
    assert b.state == CLOSED and b.calls == 0
    assert log[-1] == ("half_open", "closed", "probes_passed")


def test_half_open_probes_fail_reopen():
    b, log = make()
    now = to_half_open(b)
    p = b.acquire(now)
    b.record(now, True, 0.01, p)
    b.record(now + 1, False, 0.01, p)  # 1 of 2 failed = 50%
    assert b.state == OPEN and b.opened_at == now + 1
    assert log[-1] == ("half_open", "open", "threshold_exceeded")
    assert not b.allow(now + 2)


def test_half_open_slow_probes_reopen():
    s = BreakerSettings(window_size=2, minimum_calls=2, permitted_in_half_open=1, slow_call_duration=1.0,
                        slow_call_rate_threshold=100.0, wait_in_open=1.0)
    b, _ = make(s)
    b.record(0.0, False, 0.1)
    b.record(0.0, False, 0.1)
    assert b.state == OPEN
    p = b.acquire(1.0)
    assert b.state == HALF_OPEN
    b.record(3.0, True, 2.0, p)
    assert b.state == OPEN


def test_half_open_max_wait_reopens():
    s = BreakerSettings(window_size=4, minimum_calls=4, permitted_in_half_open=2, wait_in_open=10.0,
                        max_wait_in_half_open=5.0)
    b, log = make(s)
    now = to_half_open(b)
    assert b.retry_after(now + 1) == 0.0  # one permit left
    b.acquire(now + 1)
    assert b.retry_after(now + 1) == pytest.approx(4.0)
    assert not b.allow(now + 5)
    assert log[-1] == ("half_open", "open", "half_open_expired")
    assert b.state == OPEN and b.opened_at == now + 5


def test_stale_permit_is_ignored_in_half_open():
    b, _ = make()
    old = b.acquire(0.0)
    now = to_half_open(b)
    b.record(now, False, 0.01, old)
    assert b.probe_calls == 0 and b.state == HALF_OPEN


def test_release_gives_probe_slot_back():
    b, _ = make()
    now = to_half_open(b)
    p = b.acquire(now)
    assert not b.allow(now)
    b.release(now, p)
    assert b.allow(now)


def test_reset_from_every_state():
    for setup in (lambda b: None, trip, to_half_open):
        b, log = make()
        setup(b)
        b.record(0.0, False, 0.01) if b.state == CLOSED else None
        b.reset(20.0)
        assert b.state == CLOSED and b.calls == 0
        assert log[-1][1:] == ("closed", "reset")


@settings(max_examples=200, deadline=None)
@given(
    permitted=st.integers(1, 5),
    ops=st.lists(st.tuples(st.sampled_from(["allow", "ok", "fail", "slow", "release"]), st.floats(0, 3)),
                 max_size=60),
)
def test_half_open_never_exceeds_permits(permitted, ops):
    s = BreakerSettings(window_size=3, minimum_calls=3, permitted_in_half_open=permitted, wait_in_open=2.0,
                        slow_call_duration=1.0)
    b = CircuitBreaker(s)
    now = 0.0
    outstanding: list[int] = []
    in_flight: dict[int, int] = {}  # half-open generation -> permits granted and not released
    for op, dt in ops:
        now += dt
        if op == "allow":
            state_before = b.tick(now)
            p = b.acquire(now)
            if p >= 0:
                outstanding.append(p)
                if state_before == HALF_OPEN:
                    in_flight[p] = in_flight.get(p, 0) + 1
                    # permits granted in one half-open generation, minus those released, never exceed the setting
                    assert in_flight[p] <= permitted
            else:
                assert b.state in (OPEN, HALF_OPEN)
        elif outstanding:
            p = outstanding.pop(0)
            if op == "release":
                if p == b.generation and b.state == HALF_OPEN and p in in_flight:
                    in_flight[p] -= 1
                b.release(now, p)
            else:
                b.record(now, op == "ok", 2.0 if op == "slow" else 0.1, p)
        assert b.state in (CLOSED, OPEN, HALF_OPEN)
        if b.state == HALF_OPEN:
            assert b.issued <= permitted and b.probe_calls <= permitted


# -- registry --------------------------------------------------------------------------------------------------------
def test_registry_keeps_state_when_settings_unchanged_and_resets_on_change():
    reg = BreakerRegistry()
    reg.reconcile({"a": SMALL, "b": SMALL})
    a = reg.get("a")
    t = reg.get("a", "10.0.0.1:80")
    assert a is not None and t is not None and a is not t
    trip(a)
    assert reg.get("c") is None
    # reload: a unchanged (an equal settings object), b changed, c new
    changed = reg.reconcile({"a": small(),
                             "b": BreakerSettings(window_size=7), "c": SMALL})
    assert changed == []  # b had no breaker yet
    assert reg.get("a") is a and a.state == OPEN
    b = reg.get("b")
    assert b is not None and b.settings.window_size == 7
    changed = reg.reconcile({"a": BreakerSettings(wait_in_open=1.0)})
    assert set(changed) == {("a", ""), ("a", "10.0.0.1:80"), ("b", "")}
    fresh = reg.get("a")
    assert fresh is not a and fresh is not None and fresh.state == CLOSED
    assert reg.get("b") is None


def test_settings_validation():
    with pytest.raises(ValueError):
        BreakerSettings(failure_rate_threshold=0)
    with pytest.raises(ValueError):
        BreakerSettings(window_type=5)
    assert BreakerSettings().window_type == COUNT_BASED


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 8), minimum=st.integers(1, 10), threshold=st.sampled_from([25.0, 50.0, 100.0]),
       calls=st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_count_window_matches_reference(size, minimum, threshold, calls):
    s = BreakerSettings(window_size=size, minimum_calls=minimum, failure_rate_threshold=threshold,
                        slow_call_rate_threshold=threshold, slow_call_duration=1.0, wait_in_open=1e9,
                        permitted_in_half_open=1)
    b = CircuitBreaker(s)
    seen: list[tuple[bool, bool]] = []
    for failed, slow in calls:
        b.record(0.0, not failed, 2.0 if slow else 0.5)
        seen.append((failed, slow))
        last = seen[-size:]
        assert b.calls == len(last)
        assert b.failures == sum(f for f, _ in last) and b.slow == sum(x for _, x in last)
        n = len(last)
        should_open = n >= min(minimum, size) and (
            sum(f for f, _ in last) * 100 >= threshold * n or sum(x for _, x in last) * 100 >= threshold * n)
        assert b.state == (OPEN if should_open else CLOSED)
        if should_open:
            break


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 5), gaps=st.lists(st.tuples(st.floats(0, 3), st.booleans()), max_size=40))
def test_time_window_matches_reference(size, gaps):
    s = BreakerSettings(window_type=TIME_BASED, window_size=size, minimum_calls=1000, permitted_in_half_open=1)
    b = CircuitBreaker(s)
    now = 100.0
    seen: list[tuple[float, bool]] = []
    for dt, failed in gaps:
        now += dt
        b.record(now, not failed, 0.1)
        seen.append((now, failed))
        live = [f for t, f in seen if int(t) > int(now) - size]
        assert b.calls == len(live) and b.failures == sum(live)


def test_transition_fields():
    b, _ = make()
    events = []
    b.on_transition = lambda *a: events.append(transition_fields(*a))
    trip(b, 0.0)
    assert events[-1] == {"breaker": "svc", "from": "closed", "to": "open", "reason": "threshold_exceeded",
                          "calls": 4, "failure_rate": 100.0, "slow_call_rate": 0.0}
    p = b.acquire(10.0)
    b.record(10.0, True, 0.1, p)
    b.record(10.0, True, 0.1, p)
    assert events[-1]["from"] == "half_open" and events[-1]["to"] == "closed" and events[-1]["calls"] == 2
