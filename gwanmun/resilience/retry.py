"""The retry policy on top of Kong's connect ``retries``: which failures are retried, when, where, and how often.

Kong's ``retries`` (handled in ``proxy.Exchange._connect``) covers connection failures before anything was sent.
This policy covers what happens after: a response status from a chosen set, or a timeout. The proxy asks
``RetryPolicy.decide`` once an attempt has failed, and only retries on ``RETRY``:

- the method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), unless
  ``retry_non_idempotent``;
- the failure is a status in ``statuses``, or a timeout with ``on_timeout``;
- fewer than ``max_retries`` retries were made for this request;
- the request can be sent again: its body (if any) was buffered whole, at most ``body_buffer_limit`` bytes (the proxy
  does the buffering; ``BodyBuffer`` is a helper for it);
- the service's ``RetryBudget`` has a token.

Between tries the proxy waits ``backoff(retry_number)``: exponential backoff with full jitter (AWS's "full jitter":
uniform in [0, min(cap, base * 2^(n-1))]), and sends the retry to a target not tried yet (``pick_excluding``).

The budget is Finagle's ``RetryBudget`` (also tower's ``TpsBudget``): every request deposits ``percent_can_retry``
of a token, every retry withdraws one; deposits and withdrawals expire after ``ttl`` seconds; a reserve of
``min_retries_per_sec * ttl`` tokens lets a quiet service retry at all. Under load, retries are therefore at most
``percent_can_retry`` (20%) of requests plus the reserve, which is what stops retry storms from multiplying the load
on a failing service.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Final, Iterable, TypeVar

IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# decide() results: RETRY, or why not (for logs and the access log's error field)
RETRY: Final = 0
NO_RETRY_OUTCOME: Final = 1  # the status / failure is not one the policy retries
NO_RETRY_METHOD: Final = 2  # not idempotent and not opted in
NO_RETRY_EXHAUSTED: Final = 3  # max_retries reached
NO_RETRY_BODY: Final = 4  # the body was not buffered whole (over body_buffer_limit, or already streamed)
NO_RETRY_BUDGET: Final = 5  # the retry budget is empty
DECISION_NAMES: Final = ("retry", "outcome_not_retried", "method_not_idempotent", "retries_exhausted",
                         "body_not_buffered", "retry_budget_exhausted")


class RetryBudget:
    """Finagle-style retry budget: a token bucket whose deposits and withdrawals expire after ``ttl`` seconds.

    ``deposit(now)`` once per request (first tries only), ``try_withdraw(now)`` before each retry.
    Balance = min_retries_per_sec * ttl + percent_can_retry * deposits - withdrawals, over the last ``ttl`` seconds
    (kept in ``buckets`` slices, so expiry is accurate to ttl / buckets).
    """

    __slots__ = ("ttl", "min_retries_per_sec", "percent_can_retry", "reserve", "_width", "_deposits", "_withdrawals",
                 "_last", "deposits", "withdrawals")

    def __init__(self, ttl: float = 10.0, min_retries_per_sec: float = 10.0, percent_can_retry: float = 0.2,
                 buckets: int = 10) -> None:
        if ttl <= 0 or buckets < 1 or min_retries_per_sec < 0 or percent_can_retry < 0:
            raise ValueError("ttl and buckets must be positive, rates non-negative")
        self.ttl = ttl
        self.min_retries_per_sec = min_retries_per_sec
        self.percent_can_retry = percent_can_retry
        self.reserve = min_retries_per_sec * ttl
        self._width = ttl / buckets
        self._deposits = [0] * buckets
        self._withdrawals = [0] * buckets
        self._last = -1
        self.deposits = 0  # totals over the window
        self.withdrawals = 0

    def _slot(self, now: float) -> int:
        n = len(self._deposits)
        tick = int(now / self._width)
        last = self._last
        if last < 0:
            last = tick - n
        if tick > last:
            dep = self._deposits
            wd = self._withdrawals
            for k in range(1, min(tick - last, n) + 1):
                j = (last + k) % n
                self.deposits -= dep[j]
                self.withdrawals -= wd[j]
                dep[j] = 0
                wd[j] = 0
            self._last = tick
        else:
            tick = last
        return tick % n

    def balance(self, now: float) -> float:
        self._slot(now)
        return self.reserve + self.percent_can_retry * self.deposits - self.withdrawals

    def deposit(self, now: float) -> None:
        i = self._slot(now)
        self._deposits[i] += 1
        self.deposits += 1

    def try_withdraw(self, now: float) -> bool:
        i = self._slot(now)
        if self.reserve + self.percent_can_retry * self.deposits - self.withdrawals < 1.0:
            return False
        self._withdrawals[i] += 1
        self.withdrawals += 1
        return True


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """Compiled retry policy (seconds, bytes)."""

    max_retries: int = 2
    statuses: frozenset[int] = frozenset({502, 503, 504})
    on_timeout: bool = True
    retry_non_idempotent: bool = False
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    body_buffer_limit: int = 65536
    budget_ttl: float = 10.0
    budget_min_retries_per_sec: float = 10.0
    budget_percent_can_retry: float = 0.2
    methods: frozenset[str] = field(default=IDEMPOTENT_METHODS)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_base < 0 or self.backoff_max < 0 or self.body_buffer_limit < 0:
            raise ValueError("retry settings must be non-negative")


class RetryPolicy:
    """One service's policy and its budget (one per worker; keep it across reloads while its settings are equal)."""

    __slots__ = ("settings", "budget", "rng")

    def __init__(self, settings: RetrySettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.budget = RetryBudget(settings.budget_ttl, settings.budget_min_retries_per_sec,
                                  settings.budget_percent_can_retry)
        self.rng = rng if rng is not None else random.Random()

    def reconfigure(self, settings: RetrySettings) -> None:
        """New settings on reload; the budget's balance is kept while its own three settings are unchanged."""
        old = self.settings
        self.settings = settings
        if (old.budget_ttl, old.budget_min_retries_per_sec, old.budget_percent_can_retry) != (
            settings.budget_ttl, settings.budget_min_retries_per_sec, settings.budget_percent_can_retry
        ):
            self.budget = RetryBudget(settings.budget_ttl, settings.budget_min_retries_per_sec,
                                      settings.budget_percent_can_retry)

    def request_started(self, now: float) -> None:
        """A new request (not a retry) for this service: feeds the budget."""
        self.budget.deposit(now)

    def decide(self, now: float, method: str, retries_done: int, status: int, timed_out: bool,
               body_replayable: bool) -> int:
        """After a failed try: RETRY (a budget token is taken) or the NO_RETRY_* reason.

        ``status`` is the upstream's response status (0 if none arrived); ``timed_out`` says the try timed out;
        ``body_replayable`` says the whole request body is still held (True for a request without a body).
        """
        s = self.settings
        if timed_out:
            if not s.on_timeout:
                return NO_RETRY_OUTCOME
        elif status not in s.statuses:
            return NO_RETRY_OUTCOME
        if not s.retry_non_idempotent and method not in s.methods:
            return NO_RETRY_METHOD
        if retries_done >= s.max_retries:
            return NO_RETRY_EXHAUSTED
        if not body_replayable:
            return NO_RETRY_BODY
        if not self.budget.try_withdraw(now):
            return NO_RETRY_BUDGET
        return RETRY

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first): full jitter, capped."""
        return full_jitter(self.settings.backoff_base, self.settings.backoff_max, retry_number, self.rng.random())


def full_jitter(base: float, cap: float, retry_number: int, u: float) -> float:
    """uniform(0, min(cap, base * 2^(n-1))) with ``u`` uniform in [0, 1)."""
    n = retry_number - 1 if retry_number > 1 else 0
    ceiling = base * float(2 ** min(n, 62))
    if ceiling > cap:
        ceiling = cap
    return ceiling * u


T = TypeVar("T")


def pick_excluding(pick: Callable[[], T | None], tried: Iterable[T], attempts: int) -> T | None:
    """A target from ``pick`` not in ``tried``: calls ``pick`` up to ``attempts`` times (use the number of targets).

    Returns None if ``pick`` has none at all; when every pick was already tried, the last one (retrying the same
    target beats not retrying, as Envoy's ``previous_hosts`` predicate does after its attempts). ``tried`` is
    compared by identity, as targets are.
    """
    seen = [id(t) for t in tried]
    last: T | None = None
    for _ in range(attempts if attempts > 0 else 1):
        candidate = pick()
        if candidate is None:
            return last
        if id(candidate) not in seen:
            return candidate
        last = candidate
    return last


class BodyBuffer:
    """Holds a request body while it fits in ``limit`` bytes, so the request can be sent again.

    ``add`` returns False (and drops what it held) once the body goes over the limit: the request is then streamed
    and not retried (``replayable`` is False).
    """

    __slots__ = ("limit", "chunks", "size", "replayable")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.replayable = True

    def add(self, data: bytes) -> bool:
        if not self.replayable:
            return False
        self.size += len(data)
        if self.size > self.limit:
            self.replayable = False
            self.chunks = []
            return False
        self.chunks.append(data)
        return True
