"""Target selection for a service: one balancer per service, built by gwanmun/config/compile.py from the upstream's
``algorithm`` (Kong's names); a service without an upstream gets ``RoundRobin`` over its one target.

The interface (every balancer is a ``Balancer``; the proxy never needs to know which one it holds)::

    pick(key: bytes | None = None) -> Target | None
        The target for this request, or None when no target can take traffic (every weight is 0): answer 503.
        ``key`` is the hash key (gwanmun/upstream/hashing.py ``hash_key``); only ``ConsistentHashing`` reads it,
        and it treats None like a request without a key (spread by weight). Call it again for a retry.
    started(target: Target) -> None
        The request is being sent to ``target`` (call it once per try, right after ``pick``).
    finished(target: Target, latency_s: float) -> None
        That try is over (response complete, or failed): ``latency_s`` is the time from ``started`` to the end of
        the upstream response head, in seconds (Kong's latency balancer uses connect + response time). Call it
        exactly once for every ``started``, failures included (pass the time spent).
    hashing: HashSpec | None
        The upstream's ``hash_on`` settings when the balancer hashes (consistent-hashing), else None: the proxy
        computes ``hash_key(balancer.hashing, ...)`` only when it is set.

``RoundRobin`` and ``ConsistentHashing`` ignore ``started``/``finished``; ``LeastConnections`` and ``Latency`` count
requests in flight with them. Targets with weight 0 receive nothing (as in Kong), nor do targets whose ``healthy``
flag the health checks cleared (gwanmun/upstream/health.py); a hashed key whose target is unhealthy goes to the next
slot clockwise with a healthy owner, and comes back when it is healthy again.

- ``RoundRobin`` is nginx's smooth weighted round-robin: with weights 5/1/1 it yields a a b a c a a rather than
  a a a a a b c, so a heavy target never gets a burst.
- ``LeastConnections`` (Kong ``least-connections``): the lowest ``(in_flight + 1) / weight``; ties go round-robin.
- ``Latency`` (Kong ``latency``): Kong's EWMA of response time, decayed over time (``DECAY_TIME`` 10 s: an idle
  target's average drifts towards 0, so a target that was slow is tried again and recovers), scored per weight;
  like peak-EWMA the score also grows with the requests in flight, so a burst before any answer is spread.
- ``ConsistentHashing`` (Kong ``consistent-hashing``): a ring of ``slots`` slots (Kong's continuum); a key goes to
  slot ``crc32(key) % slots``. Each slot is a virtual node owned by the target with the highest weighted rendezvous
  score for it (a stable blake2b hash of the target's ``host:port`` and the slot number), so each target owns about
  ``weight / total`` of the slots and adding or removing a target moves only the slots it wins or held: about 1/N
  of the keys (Kong's own ring recomputes every target's share and moves about twice that).
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Callable

import orjson

from .dns import is_ip


@dataclass(eq=False, slots=True)
class Target:
    """One upstream address as configured: a host (IP or DNS name) and a port."""

    host: str
    port: int
    weight: int = 100
    host_header: bytes = b""  # value of Host sent upstream when the route does not preserve the client's
    label: str = ""  # "host:port", for logs
    pool: Any = None  # an IP target's keep-alive pool in this worker, bound on first use
    named: bool = False  # the host is a DNS name: resolved (from the cache) on every request
    tls: Any = None  # tls.UpstreamTLS for an https service, else None
    sni: str = ""  # with tls: the name sent as SNI and verified (the Host sent upstream, without port)
    log_label: bytes = b""  # the label JSON-encoded once, for the access log
    healthy: bool = True  # set by the worker's health checks (upstream/health.py); unhealthy targets get no traffic
    watched: bool = False  # passive health checks count this target's outcomes (the proxy then reports them)

    def __post_init__(self) -> None:
        if not self.label:
            h = f"[{self.host}]" if ":" in self.host else self.host
            self.label = f"{h}:{self.port}"
        self.log_label = orjson.dumps(self.label)
        self.named = not is_ip(self.host)


class Balancer:
    """The common interface (see the module docstring). Not used directly."""

    __slots__ = ("targets", "hashing", "_index", "tracks")

    def __init__(self, targets: tuple[Target, ...], hashing: Any = None) -> None:
        self.targets = targets
        self.hashing = hashing  # hashing.HashSpec | None
        self.tracks = False  # reads started/finished (the proxy skips those calls, and their clock, otherwise)
        self._index: dict[Target, int] = {t: i for i, t in enumerate(targets)}

    def pick(self, key: bytes | None = None) -> Target | None:
        raise NotImplementedError

    def started(self, target: Target) -> None:
        pass

    def finished(self, target: Target, latency_s: float) -> None:
        pass


class RoundRobin(Balancer):
    __slots__ = ("_current", "_weights", "_total")

    def __init__(self, targets: tuple[Target, ...], hashing: Any = None) -> None:
        super().__init__(targets, hashing)
        self._weights: tuple[int, ...] = tuple(t.weight for t in targets)
        self._total: int = sum(self._weights)
        self._current: list[int] = [0] * len(targets)

    def pick(self, key: bytes | None = None) -> Target | None:
        """The next target, or None when every weight is 0 or every target with a weight is unhealthy.

        Unhealthy targets (``Target.healthy`` False) are skipped as nginx skips down peers: they take no part in the
        round (their current value stays) and the chosen one is lowered by the total weight of the targets that took
        part, so the healthy ones keep smooth, weighted shares."""
        targets = self.targets
        if len(targets) == 1:
            t = targets[0]
            return t if self._total and t.healthy else None
        if not self._total:
            return None
        current = self._current
        best = -1
        best_value = 0
        total = 0
        for i, w in enumerate(self._weights):
            if w and targets[i].healthy:
                total += w
                v = current[i] + w
                current[i] = v
                if best < 0 or v > best_value:
                    best, best_value = i, v
        if best < 0:
            return None
        current[best] -= total
        return targets[best]


class LeastConnections(Balancer):
    """Fewest requests in flight per unit of weight; among equals, round-robin."""

    __slots__ = ("active", "_weights", "_next")

    def __init__(self, targets: tuple[Target, ...], hashing: Any = None) -> None:
        super().__init__(targets, hashing)
        self.tracks = True
        self._weights: tuple[int, ...] = tuple(t.weight for t in targets)
        self.active: list[int] = [0] * len(targets)
        self._next: int = 0

    def pick(self, key: bytes | None = None) -> Target | None:
        weights = self._weights
        active = self.active
        n = len(weights)
        if n == 0:
            return None
        start = self._next
        best = -1
        best_a = 0
        best_w = 1
        targets = self.targets
        for j in range(n):
            i = (start + j) % n
            w = weights[i]
            if w and targets[i].healthy:
                a = active[i] + 1
                if best < 0 or a * best_w < best_a * w:  # a / w < best_a / best_w
                    best, best_a, best_w = i, a, w
        if best < 0:
            return None
        self._next = (best + 1) % n
        return self.targets[best]

    def started(self, target: Target) -> None:
        i = self._index.get(target, -1)
        if i >= 0:
            self.active[i] += 1

    def finished(self, target: Target, latency_s: float) -> None:
        i = self._index.get(target, -1)
        if i >= 0 and self.active[i] > 0:
            self.active[i] -= 1


DECAY_TIME = 10.0  # seconds: Kong's latency balancer (kong/runloop/balancer/latency.lua)
_UNMEASURED = 1e-6  # the score floor of a target without a sample yet, so requests in flight still count


def _monotonic() -> float:
    return time.monotonic()


class Latency(Balancer):
    """Lowest ``decayed_ewma * (in_flight + 1) / weight``. The EWMA is Kong's: on each sample,
    ``ewma = ewma * w + rtt * (1 - w)`` with ``w = exp(-elapsed / DECAY_TIME)`` since the previous sample (the first
    sample is taken as is); when scoring, the same decay towards 0 is applied for the time since the last sample."""

    __slots__ = ("ewma", "_touched", "_measured", "active", "_weights", "_next", "_clock")

    def __init__(self, targets: tuple[Target, ...], hashing: Any = None,
                 clock: Callable[[], float] = _monotonic) -> None:
        super().__init__(targets, hashing)
        self.tracks = True
        n = len(targets)
        self._weights: tuple[int, ...] = tuple(t.weight for t in targets)
        self.ewma: list[float] = [0.0] * n
        self._touched: list[float] = [0.0] * n
        self._measured: list[bool] = [False] * n
        self.active: list[int] = [0] * n
        self._next: int = 0
        self._clock: Callable[[], float] = clock

    def score(self, i: int, now: float) -> float:
        """Target ``i``'s current score (lower is better); weight must not be 0."""
        e = self.ewma[i]
        if self._measured[i]:
            td = now - self._touched[i]
            if td > 0.0:
                e *= math.exp(-td / DECAY_TIME)
        if e < _UNMEASURED:
            e = _UNMEASURED
        return e * (self.active[i] + 1) / self._weights[i]

    def pick(self, key: bytes | None = None) -> Target | None:
        weights = self._weights
        n = len(weights)
        if n == 0:
            return None
        now = self._clock()
        start = self._next
        targets = self.targets
        best = -1
        best_score = 0.0
        for j in range(n):
            i = (start + j) % n
            if weights[i] and targets[i].healthy:
                s = self.score(i, now)
                if best < 0 or s < best_score:
                    best, best_score = i, s
        if best < 0:
            return None
        self._next = (best + 1) % n
        return self.targets[best]

    def started(self, target: Target) -> None:
        i = self._index.get(target, -1)
        if i >= 0:
            self.active[i] += 1

    def finished(self, target: Target, latency_s: float) -> None:
        i = self._index.get(target, -1)
        if i < 0:
            return
        if self.active[i] > 0:
            self.active[i] -= 1
        now = self._clock()
        rtt = latency_s if latency_s > 0.0 else 0.0
        if self._measured[i]:
            td = now - self._touched[i]
            w = math.exp(-td / DECAY_TIME) if td > 0.0 else 1.0
            self.ewma[i] = self.ewma[i] * w + rtt * (1.0 - w)
        else:
            self.ewma[i] = rtt
            self._measured[i] = True
        self._touched[i] = now


def _slot_hash(seed: bytes, slot: int) -> int:
    return int.from_bytes(blake2b(slot.to_bytes(4, "little"), digest_size=8, key=seed).digest(), "little")


_RINGS: dict[tuple[int, tuple[tuple[str, int], ...]], list[int]] = {}  # recent rings: a reload rebuilds none
_RINGS_KEPT = 64


def build_ring(targets: tuple[Target, ...], slots: int) -> list[int]:
    """Slot -> index into ``targets`` (weighted rendezvous hashing per slot); empty when every weight is 0.
    Costs about ``slots * targets`` hashes (0.15 s for 20 targets and 10,000 slots), so recent rings are kept."""
    cache_key = (slots, tuple((t.label, t.weight) for t in targets))
    cached = _RINGS.get(cache_key)
    if cached is not None:
        return cached
    ring = _build_ring(targets, slots)
    if len(_RINGS) >= _RINGS_KEPT:
        _RINGS.clear()
    _RINGS[cache_key] = ring
    return ring


def _build_ring(targets: tuple[Target, ...], slots: int) -> list[int]:
    live = [(i, blake2b(t.label.encode("utf-8"), digest_size=32).digest(), float(t.weight))
            for i, t in enumerate(targets) if t.weight > 0]  # a blake2b key is at most 64 bytes: hash the label
    if not live:
        return []
    equal = all(w == live[0][2] for _, _, w in live)
    ring: list[int] = [0] * slots
    scale = 1.0 / 18446744073709551616.0  # 2**-64
    for s in range(slots):
        best = -1
        best_score = 0.0
        for i, seed, w in live:
            h = _slot_hash(seed, s)
            if equal:
                score = float(h)
            else:
                u = (h + 0.5) * scale  # in (0, 1)
                score = -w / math.log(u)
            if best < 0 or score > best_score:
                best, best_score = i, score
        ring[s] = best
    return ring


class ConsistentHashing(Balancer):
    """A key always lands on the same target while the targets stay the same; a request without a key (None)
    walks the ring, which spreads such requests by weight."""

    __slots__ = ("slots", "ring", "_cursor")

    def __init__(self, targets: tuple[Target, ...], hashing: Any = None, slots: int = 10000) -> None:
        super().__init__(targets, hashing)
        self.slots: int = slots
        self.ring: list[int] = build_ring(targets, slots)
        self._cursor: int = 0

    def pick(self, key: bytes | None = None) -> Target | None:
        ring = self.ring
        if not ring:
            return None
        n = len(ring)
        if key is None:
            s = self._cursor
            self._cursor = (s + 1) % n
        else:
            s = zlib.crc32(key) % n
        targets = self.targets
        t = targets[ring[s]]
        if t.healthy:
            return t
        for j in range(1, n):  # an unhealthy owner: the next slot clockwise whose owner is healthy (as Kong)
            t = targets[ring[(s + j) % n]]
            if t.healthy:
                return t
        return None
