"""A circuit breaker with Resilience4j's semantics, written as an explicit transition table.

States: CLOSED (calls pass and are measured), OPEN (calls are refused until ``wait_in_open`` has passed),
HALF_OPEN (``permitted_in_half_open`` probe calls pass; their outcome closes or reopens the circuit).

Every state change goes through ``TRANSITIONS[state][event] -> (new state, action)``; the guards that turn an
observation (a recorded call, the clock) into an event are in ``_record_event`` and ``_clock_event``. Nothing else
changes ``state``.

Rules (Resilience4j's):

- A call is *failed* when the caller records ``ok=False``; *slow* when its duration is strictly greater than
  ``slow_call_duration``. A call can be both.
- In CLOSED, the sliding window is either the last ``window_size`` calls (count-based) or the calls of the last
  ``window_size`` seconds (time-based, in 1-second buckets). Rates are evaluated only once the window holds at least
  ``minimum_calls`` calls (for a count window, at most ``window_size``). The circuit opens when the failure rate is
  >= ``failure_rate_threshold`` or the slow-call rate is >= ``slow_call_rate_threshold`` (both percentages).
- OPEN refuses every call. The first ``acquire``/``allow``, ``tick`` or ``retry_after`` at or after
  ``opened_at + wait_in_open`` moves it to HALF_OPEN (Resilience4j without the automatic-transition thread). The
  ``state`` attribute is as of the last call; ``tick(now)`` returns the state now.
- HALF_OPEN permits ``permitted_in_half_open`` calls and refuses the rest. Once all of them are recorded, the
  rates over those calls decide: >= a threshold reopens (a new wait), else the circuit closes with an empty
  window. With ``max_wait_in_half_open > 0``, a circuit still half-open after that long reopens.
- Each transition starts a new *generation*. ``acquire`` returns the generation as a permit; ``record`` and
  ``release`` with a permit from an older generation are ignored, so a slow call started while CLOSED cannot be
  counted as a half-open probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Final

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2
STATE_NAMES: Final = ("closed", "open", "half_open")

# Events: what the guards observe.
E_RECORDED: Final = 0  # a call was recorded and no decision is due (rates under thresholds, or too few calls)
E_EXCEEDED: Final = 1  # a rate reached its threshold with enough calls (closed window, or all probes in)
E_PROBES_PASSED: Final = 2  # every half-open probe is in and both rates are under their thresholds
E_WAIT_ELAPSED: Final = 3  # the open state's wait is over
E_HALF_OPEN_EXPIRED: Final = 4  # max_wait_in_half_open passed before the probes decided
E_RESET: Final = 5  # reset() by an operator, or the registry replacing settings
EVENT_NAMES: Final = ("recorded", "threshold_exceeded", "probes_passed", "wait_elapsed", "half_open_expired", "reset")

# Actions run on entering the new state.
A_NONE: Final = 0  # nothing (no transition, or an event that cannot happen in that state)
A_CLOSE: Final = 1  # new empty closed window
A_OPEN: Final = 2  # opened_at = now: start the wait
A_PROBE: Final = 3  # half_open_at = now, no probes issued or recorded

# state x event -> (new state, action). Complete: every pair is listed; impossible pairs are explicit no-ops.
TRANSITIONS: Final[tuple[tuple[tuple[int, int], ...], ...]] = (
    (  # CLOSED
        (CLOSED, A_NONE),  # recorded
        (OPEN, A_OPEN),  # threshold exceeded
        (CLOSED, A_NONE),  # probes passed: cannot happen in closed
        (CLOSED, A_NONE),  # wait elapsed: cannot happen in closed
        (CLOSED, A_NONE),  # half-open expired: cannot happen in closed
        (CLOSED, A_CLOSE),  # reset
    ),
    (  # OPEN
        (OPEN, A_NONE),  # recorded: a late result of a call let through before opening; ignored
        (OPEN, A_NONE),  # threshold exceeded: ignored (no window in open)
        (OPEN, A_NONE),  # probes passed: cannot happen in open
        (HALF_OPEN, A_PROBE),  # wait elapsed
        (OPEN, A_NONE),  # half-open expired: cannot happen in open
        (CLOSED, A_CLOSE),  # reset
    ),
    (  # HALF_OPEN
        (HALF_OPEN, A_NONE),  # recorded: probes still outstanding
        (OPEN, A_OPEN),  # probes failed
        (CLOSED, A_CLOSE),  # probes passed
        (HALF_OPEN, A_NONE),  # wait elapsed: cannot happen in half-open
        (OPEN, A_OPEN),  # half-open expired
        (CLOSED, A_CLOSE),  # reset
    ),
)

COUNT_BASED: Final = 0
TIME_BASED: Final = 1


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Compiled settings (seconds, percentages). Equality decides whether a reload keeps a breaker's state."""

    window_type: int = COUNT_BASED
    window_size: int = 100  # calls (count-based) or seconds (time-based)
    minimum_calls: int = 100
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float = 60.0
    wait_in_open: float = 60.0
    permitted_in_half_open: int = 10
    max_wait_in_half_open: float = 0.0  # 0: wait for every probe
    # what the proxy records as failed, besides its own errors (connect failure, timeout, invalid response)
    failure_statuses: frozenset[int] = frozenset({500, 502, 503, 504})
    per_target: bool = False  # also keep one breaker per target of the service

    def is_failure(self, status: int) -> bool:
        """An upstream response with this status counts as a failed call."""
        return status in self.failure_statuses

    def __post_init__(self) -> None:
        if self.window_type not in (COUNT_BASED, TIME_BASED):
            raise ValueError("window_type must be COUNT_BASED or TIME_BASED")
        if self.window_size < 1 or self.minimum_calls < 1 or self.permitted_in_half_open < 1:
            raise ValueError("window_size, minimum_calls and permitted_in_half_open must be >= 1")
        if not (0.0 < self.failure_rate_threshold <= 100.0 and 0.0 < self.slow_call_rate_threshold <= 100.0):
            raise ValueError("rate thresholds are percentages in (0, 100]")
        if self.slow_call_duration <= 0 or self.wait_in_open < 0 or self.max_wait_in_half_open < 0:
            raise ValueError("durations must be positive")


TransitionHook = Callable[["CircuitBreaker", int, int, int, float], None]
"""Called after each state change as hook(breaker, old_state, new_state, event, now)."""


class CircuitBreaker:
    """One circuit (a service, or one target of it). Not thread-safe: one per worker, used from the event loop."""

    __slots__ = (
        "name",
        "settings",
        "on_transition",
        "state",
        "generation",
        "opened_at",
        "half_open_at",
        # the closed window: totals, plus per-slot outcomes (count) or per-second buckets (time)
        "calls",
        "failures",
        "slow",
        "_slot_flags",
        "_next_slot",
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_last_second",
        # half-open probes
        "issued",
        "probe_calls",
        "probe_failures",
        "probe_slow",
    )

    def __init__(self, settings: BreakerSettings, name: str = "", on_transition: TransitionHook | None = None) -> None:
        self.name = name
        self.settings = settings
        self.on_transition = on_transition
        self.state = CLOSED
        self.generation = 0
        self.opened_at = 0.0
        self.half_open_at = 0.0
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self._slot_flags: list[int] = []
        self._next_slot = 0
        self._b_calls: list[int] = []
        self._b_failures: list[int] = []
        self._b_slow: list[int] = []
        self._last_second = -1
        self.issued = 0
        self.probe_calls = 0
        self.probe_failures = 0
        self.probe_slow = 0
        self._clear_window()

    # ------------------------------------------------------------------------------------------------------------
    # the machine
    # ------------------------------------------------------------------------------------------------------------
    def fire(self, event: int, now: float) -> int:
        """Apply ``event`` through the table; returns the new state."""
        old = self.state
        new, action = TRANSITIONS[old][event]
        if action == A_NONE:
            return old
        self.state = new
        self.generation += 1
        if action == A_CLOSE:
            self._clear_window()
        elif action == A_OPEN:
            self.opened_at = now
        elif action == A_PROBE:
            self.half_open_at = now
            self.issued = 0
            self.probe_calls = 0
            self.probe_failures = 0
            self.probe_slow = 0
        hook = self.on_transition
        if hook is not None:
            hook(self, old, new, event, now)
        return new

    def _clock_event(self, now: float) -> int:
        """The time-driven event due at ``now``, or -1."""
        s = self.settings
        if self.state == OPEN:
            if now >= self.opened_at + s.wait_in_open:
                return E_WAIT_ELAPSED
        elif self.state == HALF_OPEN:
            if s.max_wait_in_half_open > 0 and now >= self.half_open_at + s.max_wait_in_half_open:
                return E_HALF_OPEN_EXPIRED
        return -1

    def tick(self, now: float) -> int:
        """Apply the clock's events (the open wait, the half-open limit); returns the state."""
        event = self._clock_event(now)
        while event >= 0:
            self.fire(event, now)
            event = self._clock_event(now)
        return self.state

    # ------------------------------------------------------------------------------------------------------------
    # the API
    # ------------------------------------------------------------------------------------------------------------
    def acquire(self, now: float) -> int:
        """A permit (the generation, >= 0) if a call may go now, else -1. Pass the permit to record/release."""
        state = self.tick(now)
        if state == CLOSED:
            return self.generation
        if state == HALF_OPEN and self.issued < self.settings.permitted_in_half_open:
            self.issued += 1
            return self.generation
        return -1

    def allow(self, now: float) -> bool:
        return self.acquire(now) >= 0

    def record(self, now: float, ok: bool, duration_s: float, permit: int = -1) -> None:
        """The outcome of a permitted call. ``permit`` from ``acquire`` (else the call counts for the current state)."""
        if permit >= 0 and permit != self.generation:
            return  # a call from an earlier state: it says nothing about this one
        self.tick(now)
        if permit >= 0 and permit != self.generation:
            return  # the clock just moved the state on
        slow = duration_s > self.settings.slow_call_duration
        state = self.state
        if state == CLOSED:
            self._add(now, not ok, slow)
        elif state == HALF_OPEN:
            self.probe_calls += 1
            if not ok:
                self.probe_failures += 1
            if slow:
                self.probe_slow += 1
            if permit < 0 and self.issued < self.probe_calls:
                self.issued = self.probe_calls  # an unpermitted record still occupies a probe slot
        self.fire(self._record_event(), now)

    def release(self, now: float, permit: int) -> None:
        """A permitted call that ended without an outcome (the client went away): give its probe slot back."""
        if permit >= 0 and permit == self.generation and self.state == HALF_OPEN and self.issued > self.probe_calls:
            self.issued -= 1

    def reset(self, now: float) -> None:
        self.fire(E_RESET, now)

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be permitted again (for a 503's Retry-After); 0 when one may go now."""
        state = self.tick(now)
        s = self.settings
        if state == OPEN:
            return max(0.0, self.opened_at + s.wait_in_open - now)
        if state == HALF_OPEN and self.issued >= s.permitted_in_half_open:
            if s.max_wait_in_half_open > 0:
                return max(0.0, self.half_open_at + s.max_wait_in_half_open - now)
            return 1.0  # the probes decide; nothing better to promise
        return 0.0

    def failure_rate(self) -> float:
        """Percent of failed calls in the closed window, or -1 below the minimum number of calls."""
        if self.calls < self._minimum():
            return -1.0
        return self.failures * 100.0 / self.calls

    def slow_call_rate(self) -> float:
        if self.calls < self._minimum():
            return -1.0
        return self.slow * 100.0 / self.calls

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    # ------------------------------------------------------------------------------------------------------------
    # guards and the window
    # ------------------------------------------------------------------------------------------------------------
    def _minimum(self) -> int:
        s = self.settings
        if s.window_type == COUNT_BASED:
            return min(s.minimum_calls, s.window_size)
        return s.minimum_calls

    def _record_event(self) -> int:
        s = self.settings
        if self.state == CLOSED:
            calls = self.calls
            if calls < self._minimum():
                return E_RECORDED
            if (
                self.failures * 100.0 >= s.failure_rate_threshold * calls
                or self.slow * 100.0 >= s.slow_call_rate_threshold * calls
            ):
                return E_EXCEEDED
            return E_RECORDED
        if self.state == HALF_OPEN:
            calls = self.probe_calls
            if calls < s.permitted_in_half_open:
                return E_RECORDED
            if (
                self.probe_failures * 100.0 >= s.failure_rate_threshold * calls
                or self.probe_slow * 100.0 >= s.slow_call_rate_threshold * calls
            ):
                return E_EXCEEDED
            return E_PROBES_PASSED
        return E_RECORDED

    def _clear_window(self) -> None:
        s = self.settings
        self.calls = 0
        self.failures = 0
        self.slow = 0
        if s.window_type == COUNT_BASED:
            self._slot_flags = [-1] * s.window_size
            self._next_slot = 0
        else:
            self._b_calls = [0] * s.window_size
            self._b_failures = [0] * s.window_size
            self._b_slow = [0] * s.window_size
            self._last_second = -1

    def _add(self, now: float, failed: bool, slow: bool) -> None:
        if self.settings.window_type == COUNT_BASED:
            flags = self._slot_flags
            i = self._next_slot
            old = flags[i]
            if old >= 0:  # evict the oldest call
                self.calls -= 1
                if old & 1:
                    self.failures -= 1
                if old & 2:
                    self.slow -= 1
            flags[i] = (1 if failed else 0) | (2 if slow else 0)
            self._next_slot = i + 1 if i + 1 < len(flags) else 0
        else:
            i = self._advance(now)
            self._b_calls[i] += 1
            if failed:
                self._b_failures[i] += 1
            if slow:
                self._b_slow[i] += 1
        self.calls += 1
        if failed:
            self.failures += 1
        if slow:
            self.slow += 1

    def _advance(self, now: float) -> int:
        """Expire the time window's buckets older than ``window_size`` seconds; returns the bucket for ``now``."""
        size = self.settings.window_size
        second = int(now)
        last = self._last_second
        if last < 0:
            last = second - size
        if second > last:
            steps = min(second - last, size)
            calls = self._b_calls
            fails = self._b_failures
            slows = self._b_slow
            for k in range(1, steps + 1):
                j = (last + k) % size
                self.calls -= calls[j]
                self.failures -= fails[j]
                self.slow -= slows[j]
                calls[j] = fails[j] = slows[j] = 0
            self._last_second = second
        else:
            second = last  # the clock went back: count it in the newest bucket
        return second % size

    def expire(self, now: float) -> None:
        """Drop time-window calls older than the window (reads of the rates between records may call it)."""
        if self.settings.window_type == TIME_BASED and self.state == CLOSED:
            self._advance(now)


def transition_fields(breaker: CircuitBreaker, old: int, new: int, event: int, now: float) -> dict[str, object]:
    """The fields of a ``circuit_breaker`` log event for a transition (for ``server.event``): who, from, to, why,
    and the rates that decided (of the closed window, or of the half-open probes)."""
    if old == HALF_OPEN:
        calls, failures, slow = breaker.probe_calls, breaker.probe_failures, breaker.probe_slow
    else:
        calls, failures, slow = breaker.calls, breaker.failures, breaker.slow
    return {
        "breaker": breaker.name,
        "from": STATE_NAMES[old],
        "to": STATE_NAMES[new],
        "reason": EVENT_NAMES[event],
        "calls": calls,
        "failure_rate": round(failures * 100.0 / calls, 2) if calls else 0.0,
        "slow_call_rate": round(slow * 100.0 / calls, 2) if calls else 0.0,
    }


def retry_after_header(seconds: float) -> int:
    """Retry-After is whole seconds (RFC 9110 §10.2.3): round up, at least 1."""
    whole = int(seconds)
    if whole < seconds:
        whole += 1
    return whole if whole > 0 else 1


BreakerKey = tuple[str, str]
"""(service name, target label); the target is "" for the service's own breaker."""


class BreakerRegistry:
    """Breakers by (service, target), kept across config reloads.

    The rule: a breaker survives a reload when its key is still configured and its ``BreakerSettings`` compare equal
    (the same compiled values: unrelated changes to the service, its routes or other services do not matter). When
    its settings change, it is replaced by a new CLOSED breaker. When its service is gone (or has no breaker
    settings any more), it is dropped. A renamed service is a new key, hence a new breaker. Per-target breakers are
    created on first use (targets come and go with DNS) and follow their service's settings.
    """

    __slots__ = ("breakers", "settings", "on_transition")

    def __init__(self, on_transition: TransitionHook | None = None) -> None:
        self.breakers: dict[BreakerKey, CircuitBreaker] = {}
        self.settings: dict[str, BreakerSettings] = {}  # service -> settings in force
        self.on_transition = on_transition

    def get(self, service: str, target: str = "") -> CircuitBreaker | None:
        """The breaker for a service (target "") or one of its targets; None when the service has none."""
        key = (service, target)
        breaker = self.breakers.get(key)
        if breaker is not None:
            return breaker
        settings = self.settings.get(service)
        if settings is None:
            return None
        name = service if not target else service + "/" + target
        breaker = CircuitBreaker(settings, name, self.on_transition)
        self.breakers[key] = breaker
        return breaker

    def reconcile(self, settings: dict[str, BreakerSettings]) -> list[BreakerKey]:
        """Apply a new config's breaker settings (service -> settings); returns the keys reset or dropped."""
        changed: list[BreakerKey] = []
        for key in list(self.breakers):
            new = settings.get(key[0])
            if new is None or new != self.breakers[key].settings:
                del self.breakers[key]
                changed.append(key)
        self.settings = dict(settings)
        return changed
