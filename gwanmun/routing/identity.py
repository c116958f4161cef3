"""Routing by identity: a route's ``splits`` send an authenticated caller to another service.

The rule for when authentication runs: a request is matched to a route by the usual matchers (method, host, path,
headers, ...); the route's plugins then run their access phase, which is where authentication happens; only then is
the *service* chosen, by the first split whose conditions hold for the caller, else the route's own service. So
identity never takes part in matching (no request is authenticated twice, nor by plugins of a route it does not
take), and every split of a route shares that route's plugins: a split changes where the request goes, not what
runs on it. Splits match authenticated callers only (an anonymous consumer matches none).

Conditions of one split must all hold: ``consumers`` (usernames, custom ids or ids), ``consumer_groups``,
``claims`` (a verified JWT's claims: each listed claim must have one of the listed values; a list claim matches
when it contains one), and ``percent``: a stable share of consumers, by a hash of the consumer id, so a given caller
always lands on the same side. Percent shares are laid end to end in split order: two splits of 10 and 20 take
buckets [0, 10) and [10, 30) of 100.
"""

from __future__ import annotations

import zlib
from typing import Any


class Split:
    __slots__ = ("service", "consumers", "groups", "claims", "lo", "hi")

    def __init__(self, service: Any, consumers: frozenset[str], groups: frozenset[str],
                 claims: tuple[tuple[str, frozenset[Any]], ...], lo: float, hi: float) -> None:
        self.service = service
        self.consumers = consumers
        self.groups = groups
        self.claims = claims
        self.lo = lo  # percent bucket range [lo, hi); hi 0: no percent condition
        self.hi = hi

    def matches(self, consumer: Any, claims: dict[str, Any] | None) -> bool:
        if self.consumers and not (consumer.id in self.consumers or consumer.username in self.consumers
                                   or consumer.custom_id in self.consumers):
            return False
        if self.groups and not self.groups.intersection(consumer.groups):
            return False
        for name, allowed in self.claims:
            if claims is None or name not in claims:
                return False
            value = claims[name]
            values = value if isinstance(value, list) else [value]
            if not any(_hashable(v) in allowed for v in values):
                return False
        if self.hi:
            b = bucket(consumer.id)
            if not (self.lo <= b < self.hi):
                return False
        return True


class Splits:
    __slots__ = ("splits",)

    def __init__(self, splits: tuple[Split, ...]) -> None:
        self.splits = splits

    def choose(self, ctx: Any) -> Any:
        """The service for this request, or None for the route's own."""
        consumer = ctx.consumer
        if consumer is None or not ctx.authenticated:
            return None
        for split in self.splits:
            if split.matches(consumer, ctx.claims):
                return split.service
        return None


def bucket(consumer_id: str) -> float:
    """A stable position of a consumer in [0, 100), with 0.01 resolution."""
    return (zlib.crc32(consumer_id.encode("utf-8")) % 10000) / 100.0


def _hashable(v: Any) -> Any:
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


def compile_splits(configs: list[Any], service_for) -> Splits | None:
    """``configs``: the route's ``SplitConfig`` list; ``service_for(ref)`` gives a compiled Service."""
    if not configs:
        return None
    out = []
    at = 0.0
    for c in configs:
        lo = hi = 0.0
        if c.percent is not None:
            lo, hi = at, min(100.0, at + c.percent)
            at = hi
        claims = tuple((k, frozenset(_hashable(v) for v in vals)) for k, vals in c.claims.items())
        out.append(Split(service_for(c.service), frozenset(c.consumers), frozenset(c.consumer_groups), claims, lo, hi))
    return Splits(tuple(out))
