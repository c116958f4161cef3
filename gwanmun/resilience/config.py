"""Config shapes for the resilience features, in Kong's style: snake_case, durations in milliseconds.

Durations are integer milliseconds, like Kong's service ``connect_timeout``/``read_timeout``/``write_timeout``;
rates are percentages (0-100], like Resilience4j's thresholds; sizes are counts or bytes. Each model's
``compile()`` returns the runtime settings in seconds and fractions, as ``runtime.Service`` holds its timeouts.

Not hooked into ``config.model`` yet: whether these sit on services/routes or become plugins is still open. Field
names follow Resilience4j's (``sliding_window_size``, ``wait_duration_in_open_state``, ...) so its documentation
applies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .breaker import COUNT_BASED, TIME_BASED, BreakerSettings
from .bulkhead import BulkheadSettings
from .fallback import Fallback
from .registry import ServiceResilience
from .retry import IDEMPOTENT_METHODS, RetrySettings

Ms = int  # milliseconds, as Kong's service timeouts


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _statuses(v: list[int]) -> list[int]:
    for s in v:
        if not 100 <= s <= 599:
            raise ValueError(f"status {s} is not between 100 and 599")
    return v


class CircuitBreakerConfig(_Model):
    """``circuit_breaker``: Resilience4j's settings, durations in ms. Defaults are Resilience4j's."""

    sliding_window_type: Literal["count_based", "time_based"] = "count_based"
    sliding_window_size: int = Field(100, ge=1, le=100_000)  # calls, or seconds for time_based
    minimum_number_of_calls: int = Field(100, ge=1)
    failure_rate_threshold: float = Field(50.0, gt=0, le=100)  # percent
    slow_call_rate_threshold: float = Field(100.0, gt=0, le=100)  # percent
    slow_call_duration_threshold: Ms = Field(60_000, ge=1)
    wait_duration_in_open_state: Ms = Field(60_000, ge=0)
    permitted_number_of_calls_in_half_open_state: int = Field(10, ge=1)
    max_wait_duration_in_half_open_state: Ms = Field(0, ge=0)  # 0: until every probe has answered
    failure_statuses: list[int] = [500, 502, 503, 504]  # besides connect failures, timeouts and invalid responses
    per_target: bool = False  # one breaker per target too (else only per service)

    @model_validator(mode="after")
    def _check(self) -> CircuitBreakerConfig:
        _statuses(self.failure_statuses)
        return self

    def compile(self) -> BreakerSettings:
        return BreakerSettings(
            window_type=TIME_BASED if self.sliding_window_type == "time_based" else COUNT_BASED,
            window_size=self.sliding_window_size,
            minimum_calls=self.minimum_number_of_calls,
            failure_rate_threshold=self.failure_rate_threshold,
            slow_call_rate_threshold=self.slow_call_rate_threshold,
            slow_call_duration=self.slow_call_duration_threshold / 1000.0,
            wait_in_open=self.wait_duration_in_open_state / 1000.0,
            permitted_in_half_open=self.permitted_number_of_calls_in_half_open_state,
            max_wait_in_half_open=self.max_wait_duration_in_half_open_state / 1000.0,
            failure_statuses=frozenset(self.failure_statuses),
            per_target=self.per_target,
        )


class RetryBudgetConfig(_Model):
    """``retry.budget``: Finagle's RetryBudget. Retries are at most ``percent_can_retry`` % of requests, plus a
    reserve of ``min_retries_per_second`` for quiet services, counted over the last ``ttl`` ms."""

    percent_can_retry: float = Field(20.0, ge=0, le=1000)  # percent of requests
    min_retries_per_second: float = Field(10.0, ge=0)
    ttl: Ms = Field(10_000, ge=1000, le=60_000)  # Finagle's bounds: 1 to 60 s


class RetryConfig(_Model):
    """``retry``: our policy on top of Kong's ``retries`` (which stays the number of connect attempts)."""

    max_retries: int = Field(2, ge=0, le=32767)
    on_statuses: list[int] = [502, 503, 504]
    on_timeout: bool = True
    retry_non_idempotent: bool = False  # POST and PATCH too
    backoff_base: Ms = Field(25, ge=0)  # first retry waits uniformly in [0, base]
    backoff_max: Ms = Field(250, ge=0)  # the cap of the exponential ceiling
    body_buffer_limit: int = Field(65_536, ge=0)  # bytes held to resend a body; bigger bodies are not retried
    budget: RetryBudgetConfig = Field(default_factory=lambda: RetryBudgetConfig.model_validate({}))

    @model_validator(mode="after")
    def _check(self) -> RetryConfig:
        _statuses(self.on_statuses)
        if self.backoff_max < self.backoff_base:
            raise ValueError("backoff_max must be >= backoff_base")
        return self

    def compile(self) -> RetrySettings:
        return RetrySettings(
            max_retries=self.max_retries,
            statuses=frozenset(self.on_statuses),
            on_timeout=self.on_timeout,
            retry_non_idempotent=self.retry_non_idempotent,
            backoff_base=self.backoff_base / 1000.0,
            backoff_max=self.backoff_max / 1000.0,
            body_buffer_limit=self.body_buffer_limit,
            budget_ttl=self.budget.ttl / 1000.0,
            budget_min_retries_per_sec=self.budget.min_retries_per_second,
            budget_percent_can_retry=self.budget.percent_can_retry / 100.0,
            methods=IDEMPOTENT_METHODS,
        )


class BulkheadConfig(_Model):
    """``bulkhead``: concurrent requests per service (per worker process), a FIFO queue and its timeout."""

    max_concurrent_requests: int = Field(ge=1)
    max_queue: int = Field(0, ge=0)
    queue_timeout: Ms = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> BulkheadConfig:
        if self.max_queue and not self.queue_timeout:
            raise ValueError("a queue (max_queue > 0) needs a queue_timeout")
        return self

    def compile(self) -> BulkheadSettings:
        return BulkheadSettings(self.max_concurrent_requests, self.max_queue, self.queue_timeout / 1000.0)


class ResilienceConfig(_Model):
    """The four blocks together, as one service (or route, or plugin) would carry them; all optional."""

    circuit_breaker: CircuitBreakerConfig | None = None
    retry: RetryConfig | None = None
    bulkhead: BulkheadConfig | None = None
    fallback: FallbackConfig | None = None

    def compile(self) -> ServiceResilience:
        return ServiceResilience(
            self.circuit_breaker.compile() if self.circuit_breaker is not None else None,
            self.retry.compile() if self.retry is not None else None,
            self.bulkhead.compile() if self.bulkhead is not None else None,
            self.fallback.compile() if self.fallback is not None else None,
        )


FallbackTrigger = Literal["circuit_open", "no_healthy_target", "retries_exhausted", "bulkhead_full"]
ALL_TRIGGERS: tuple[FallbackTrigger, ...] = ("circuit_open", "no_healthy_target", "retries_exhausted", "bulkhead_full")


class FallbackResponseConfig(_Model):
    status: int = Field(503, ge=200, le=599)
    headers: dict[str, str] = {}
    body: str = ""

    @model_validator(mode="after")
    def _check(self) -> FallbackResponseConfig:
        for name, value in self.headers.items():
            if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n\0"):
                raise ValueError(f"invalid header {name!r}")
            if name.lower() in ("content-length", "transfer-encoding", "connection"):
                raise ValueError(f"{name} is set by the gateway")
        return self


class FallbackConfig(_Model):
    """``fallback``: a static response or another service, when one of ``on`` happens."""

    on: list[FallbackTrigger] = list(ALL_TRIGGERS)
    response: FallbackResponseConfig | None = None
    service: str | None = None  # a service name, resolved when the config is compiled

    @model_validator(mode="after")
    def _check(self) -> FallbackConfig:
        if (self.response is None) == (self.service is None):
            raise ValueError("a fallback has exactly one of response or service")
        if not self.on:
            raise ValueError("on must name at least one trigger")
        return self

    def compile(self) -> Fallback:
        r = self.response
        if r is None:
            return Fallback(frozenset(self.on), service=self.service or "")
        headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.items())
        return Fallback(frozenset(self.on), r.status, headers, r.body.encode("utf-8"))
