"""Config shapes of the resilience features: defaults, units (ms -> s), validation, the Fallback value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gwanmun.resilience.breaker import TIME_BASED, BreakerSettings
from gwanmun.resilience.config import (
    BulkheadConfig,
    CircuitBreakerConfig,
    FallbackConfig,
    RetryConfig,
)


def test_breaker_defaults_are_resilience4j_and_ms_become_seconds():
    s = CircuitBreakerConfig().compile()
    assert s == BreakerSettings()
    s = CircuitBreakerConfig(sliding_window_type="time_based", wait_duration_in_open_state=1500,
                             slow_call_duration_threshold=250).compile()
    assert s.window_type == TIME_BASED and s.wait_in_open == 1.5 and s.slow_call_duration == 0.25
    assert s.is_failure(502) and not s.is_failure(404)


def test_equal_configs_compile_to_equal_settings():
    a = CircuitBreakerConfig.model_validate({"failure_rate_threshold": 25, "failure_statuses": [500]})
    b = CircuitBreakerConfig.model_validate({"failure_statuses": [500], "failure_rate_threshold": 25.0})
    assert a.compile() == b.compile()


@pytest.mark.parametrize("bad", [
    {"failure_rate_threshold": 0}, {"failure_rate_threshold": 101}, {"sliding_window_size": 0},
    {"sliding_window_type": "sliding"}, {"failure_statuses": [99]}, {"unknown": 1},
])
def test_breaker_rejects(bad):
    with pytest.raises(ValidationError):
        CircuitBreakerConfig.model_validate(bad)


def test_retry_compile():
    s = RetryConfig.model_validate({"on_statuses": [503], "backoff_base": 10, "backoff_max": 1000,
                                    "budget": {"percent_can_retry": 10, "ttl": 5000}}).compile()
    assert s.statuses == frozenset({503}) and s.backoff_base == 0.01 and s.backoff_max == 1.0
    assert s.budget_percent_can_retry == pytest.approx(0.1) and s.budget_ttl == 5.0
    assert RetryConfig().compile().budget_percent_can_retry == pytest.approx(0.2)
    with pytest.raises(ValidationError):
        RetryConfig(backoff_base=100, backoff_max=10)
    with pytest.raises(ValidationError):
        RetryConfig.model_validate({"budget": {"ttl": 100}})


def test_bulkhead():
    assert BulkheadConfig(max_concurrent_requests=5).max_queue == 0
    with pytest.raises(ValidationError):
        BulkheadConfig(max_concurrent_requests=5, max_queue=3)
    with pytest.raises(ValidationError):
        BulkheadConfig.model_validate({})


def test_fallback_static_and_service():
    f = FallbackConfig.model_validate({"on": ["circuit_open"], "response": {
        "status": 503, "headers": {"Content-Type": "application/json"}, "body": '{"cached": true}'}}).compile()
    assert f.applies("circuit_open") and not f.applies("retries_exhausted")
    head = f.head(b"X-Request-ID: abc\r\n")
    assert head == (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 16\r\nX-Request-ID: abc\r\n\r\n")
    assert f.body == b'{"cached": true}' and f.service == ""
    g = FallbackConfig.model_validate({"service": "backup"}).compile()
    assert g.service == "backup" and g.applies("bulkhead_full")


@pytest.mark.parametrize("bad", [
    {}, {"service": "a", "response": {}}, {"service": "a", "on": []}, {"service": "a", "on": ["sometimes"]},
    {"response": {"headers": {"Content-Length": "3"}}}, {"response": {"headers": {"X": "a\r\nb"}}},
    {"response": {"status": 99}},
])
def test_fallback_rejects(bad):
    with pytest.raises(ValidationError):
        FallbackConfig.model_validate(bad)
