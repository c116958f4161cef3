"""Target selection for a service.

``RoundRobin`` is nginx's smooth weighted round-robin: with weights 5/1/1 it yields a a b a c a a rather than
a a a a a b c, so a heavy target never gets a burst. Targets with weight 0 receive nothing (as in Kong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def __post_init__(self) -> None:
        if not self.label:
            h = f"[{self.host}]" if ":" in self.host else self.host
            self.label = f"{h}:{self.port}"
        self.named = not is_ip(self.host)


@dataclass(eq=False, slots=True)
class RoundRobin:
    targets: tuple[Target, ...]
    _current: list[int] = field(default_factory=list)
    _weights: tuple[int, ...] = ()
    _total: int = 0

    def __post_init__(self) -> None:
        self._weights = tuple(t.weight for t in self.targets)
        self._total = sum(self._weights)
        self._current = [0] * len(self.targets)

    def pick(self) -> Target | None:
        """The next target, or None when every weight is 0."""
        targets = self.targets
        if len(targets) == 1:
            return targets[0] if self._total else None
        if not self._total:
            return None
        current = self._current
        best = -1
        best_value = 0
        for i, w in enumerate(self._weights):
            if w:
                v = current[i] + w
                current[i] = v
                if best < 0 or v > best_value:
                    best, best_value = i, v
        current[best] -= self._total
        return targets[best]
