"""Per-worker resilience state by service, kept across config reloads.

A worker holds one ``WorkerResilience``. On each config swap it is given every service's compiled settings
(``ServiceResilience``, from ``config.ResilienceConfig.compile()``), keyed by service name, and reconciles:

- circuit breakers: kept while their ``BreakerSettings`` are equal, else reset (``BreakerRegistry``'s rule);
- retry policies: kept, with new settings; the budget's balance is kept while its own settings are equal;
- bulkheads: kept, with new limits (requests running and queued stay counted, so a reload never lets a burst past
  the limit);
- a service no longer configured (or renamed, or without that feature any more) loses its state.

Unnamed services have no stable key across reloads and get no resilience state.
"""

from __future__ import annotations

import asyncio

from .breaker import BreakerKey, BreakerRegistry, BreakerSettings, CircuitBreaker, TransitionHook
from .bulkhead import Bulkhead, BulkheadSettings
from .fallback import Fallback
from .retry import RetryPolicy, RetrySettings


class ServiceResilience:
    """One service's compiled resilience settings (any of them may be None), and, once a worker has reconciled them
    (``WorkerResilience.bind``), the live objects that carry them out in that worker: the request path reads these
    attributes instead of looking the service up by name."""

    __slots__ = ("breaker", "retry", "bulkhead", "fallback", "live_breaker", "live_policy", "live_bulkhead")

    def __init__(self, breaker: BreakerSettings | None = None, retry: RetrySettings | None = None,
                 bulkhead: BulkheadSettings | None = None, fallback: Fallback | None = None) -> None:
        self.breaker = breaker
        self.retry = retry
        self.bulkhead = bulkhead
        self.fallback = fallback
        self.live_breaker: CircuitBreaker | None = None
        self.live_policy: RetryPolicy | None = None
        self.live_bulkhead: Bulkhead | None = None


class WorkerResilience:
    __slots__ = ("loop", "breakers", "retries", "bulkheads", "fallbacks")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_transition: TransitionHook | None = None) -> None:
        self.loop = loop
        self.breakers = BreakerRegistry(on_transition)
        self.retries: dict[str, RetryPolicy] = {}
        self.bulkheads: dict[str, Bulkhead] = {}
        self.fallbacks: dict[str, Fallback] = {}

    def breaker(self, service: str, target: str = "") -> CircuitBreaker | None:
        """The service's breaker (target ""), or its target's when the service has ``per_target``; else None."""
        if target:
            settings = self.breakers.settings.get(service)
            if settings is None or not settings.per_target:
                return None
        return self.breakers.get(service, target)

    def reconcile(self, services: dict[str, ServiceResilience]) -> list[BreakerKey]:
        """Apply a new config; returns the breakers reset or dropped (for the reload log)."""
        breaker_settings: dict[str, BreakerSettings] = {}
        retries: dict[str, RetryPolicy] = {}
        bulkheads: dict[str, Bulkhead] = {}
        fallbacks: dict[str, Fallback] = {}
        for name, svc in services.items():
            if svc.breaker is not None:
                breaker_settings[name] = svc.breaker
            if svc.retry is not None:
                policy = self.retries.get(name)
                if policy is None:
                    policy = RetryPolicy(svc.retry)
                else:
                    policy.reconfigure(svc.retry)
                retries[name] = policy
            if svc.bulkhead is not None:
                bulkhead = self.bulkheads.get(name)
                b = svc.bulkhead
                if bulkhead is None:
                    bulkhead = Bulkhead(self.loop, b.max_concurrent, b.max_queue, b.queue_timeout)
                else:
                    bulkhead.reconfigure(b)
                bulkheads[name] = bulkhead
            if svc.fallback is not None:
                fallbacks[name] = svc.fallback
        self.retries = retries
        self.bulkheads = bulkheads
        self.fallbacks = fallbacks
        changed = self.breakers.reconcile(breaker_settings)
        for name, svc in services.items():
            self.bind(name, svc)
        return changed

    def bind(self, name: str, svc: ServiceResilience) -> None:
        """Point ``svc`` at this worker's live objects for service ``name``."""
        svc.live_breaker = self.breakers.get(name, "") if svc.breaker is not None else None
        svc.live_policy = self.retries.get(name)
        svc.live_bulkhead = self.bulkheads.get(name)
