"""Fault injection for chaos tests: delay or abort a route's requests, by percentage or when a header is present.

Envoy's fault filter is the model. A route's ``fault`` (see docs/config.md) has an optional ``delay`` and an optional
``abort``, each with a ``percentage`` of requests (0–100) and an optional ``header``: with a header, the fault applies
only to requests that carry it, and a header value that is a whole number replaces the configured duration (ms) or
status, as Envoy's ``x-envoy-fault-delay-request`` / ``x-envoy-fault-abort-request`` do. An abort wins over a delay.

Only routes that configure a fault pay for it: the proxy checks ``route.fault is None`` and nothing else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FaultSpec:
    delay_s: float = 0.0  # 0: no delay fault
    delay_percent: float = 0.0
    delay_header: bytes = b""  # lower-case; b"": every request is a candidate
    abort_status: int = 0  # 0: no abort fault
    abort_percent: float = 0.0
    abort_header: bytes = b""

    def decide(self, headers: list[tuple[bytes, bytes]]) -> tuple[int, float]:
        """(status to abort with or 0, seconds to delay or 0) for a request with these header fields."""
        if self.abort_status:
            applies, value = _gate(self.abort_header, self.abort_percent, headers)
            if applies:
                status = value if 200 <= value <= 599 else self.abort_status
                return status, 0.0
        if self.delay_s > 0 or self.delay_header:
            applies, value = _gate(self.delay_header, self.delay_percent, headers)
            if applies:
                return 0, value / 1000 if value > 0 else self.delay_s
        return 0, 0.0


def _gate(header: bytes, percent: float, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int]:
    """Whether the fault applies to this request, and the header's number (0 when absent or not a number)."""
    value = 0
    if header:
        found = False
        for name, raw in headers:
            if name.lower() == header:
                found = True
                text = raw.strip()
                if text.isdigit() and len(text) <= 9:
                    value = int(text)
                break
        if not found:
            return False, 0
    if percent >= 100:
        return True, value
    return random.random() * 100 < percent, value
