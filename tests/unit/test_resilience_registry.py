"""WorkerResilience: state by service kept or reset across reloads, by the documented rule."""

from __future__ import annotations

import asyncio

from gwanmun.resilience.breaker import OPEN, BreakerSettings
from gwanmun.resilience.config import ResilienceConfig
from gwanmun.resilience.registry import ServiceResilience, WorkerResilience


def compiled(data: dict) -> ServiceResilience:
    return ResilienceConfig.model_validate(data).compile()


def test_reload_rules():
    async def main():
        loop = asyncio.get_running_loop()
        transitions = []
        w = WorkerResilience(loop, lambda b, o, n, e, t: transitions.append((b.name, n)))
        cfg = {
            "circuit_breaker": {"sliding_window_size": 2, "minimum_number_of_calls": 2, "per_target": True},
            "retry": {"max_retries": 1},
            "bulkhead": {"max_concurrent_requests": 1, "max_queue": 1, "queue_timeout": 100},
            "fallback": {"response": {"status": 503, "body": "later"}},
        }
        assert w.reconcile({"a": compiled(cfg), "b": compiled({"retry": {}})}) == []
        br = w.breaker("a")
        tb = w.breaker("a", "10.0.0.1:80")
        assert br is not None and tb is not None and w.breaker("b") is None and w.breaker("b", "x:1") is None
        br.record(0.0, False, 0.1)
        br.record(0.0, False, 0.1)
        assert br.state == OPEN and transitions == [("a", OPEN)]
        bh = w.bulkheads["a"]
        ticket = bh.acquire(lambda: None, lambda why: None)
        pol = w.retries["a"]
        assert w.fallbacks["a"].body == b"later"

        # reload with the same settings (a new, equal compile): everything kept
        assert w.reconcile({"a": compiled(cfg), "b": compiled({"retry": {}})}) == []
        assert w.breaker("a") is br and br.state == OPEN
        assert w.bulkheads["a"] is bh and bh.active == 1 and w.retries["a"] is pol

        # the breaker's settings change: the breakers reset; bulkhead and retry kept with new limits
        cfg2 = dict(cfg, circuit_breaker={"sliding_window_size": 3}, bulkhead={"max_concurrent_requests": 4})
        changed = w.reconcile({"a": compiled(cfg2)})
        assert set(changed) == {("a", ""), ("a", "10.0.0.1:80")}
        assert w.breaker("a") is not br and w.breaker("a", "10.0.0.1:80") is None  # per_target now off
        assert w.bulkheads["a"] is bh and bh.max_concurrent == 4 and bh.active == 1
        assert "b" not in w.retries

        # the service is gone: its state too
        w.reconcile({})
        assert w.breaker("a") is None and not w.bulkheads and not w.retries and not w.fallbacks
        bh.release(ticket)  # a request admitted before the reload still releases its (old) bulkhead
        assert bh.active == 0

    asyncio.run(main())


def test_breaker_settings_equality_is_by_value():
    assert compiled({"circuit_breaker": {}}).breaker == BreakerSettings()
