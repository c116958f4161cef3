"""A compiled fallback: what to answer instead of a 503/502/504 when a circuit is open, no target is healthy,
retries are exhausted or the bulkhead is full (the config is ``config.FallbackConfig``)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

CIRCUIT_OPEN: Final = "circuit_open"
NO_HEALTHY_TARGET: Final = "no_healthy_target"
RETRIES_EXHAUSTED: Final = "retries_exhausted"
BULKHEAD_FULL: Final = "bulkhead_full"


class Fallback:
    """A compiled fallback: a static response (``service`` empty) or the name of a service to send the request to."""

    __slots__ = ("triggers", "status", "headers", "body", "service")

    def __init__(self, triggers: frozenset[str], status: int = 503, headers: tuple[tuple[bytes, bytes], ...] = (),
                 body: bytes = b"", service: str = "") -> None:
        self.triggers = triggers
        self.status = status
        self.headers = headers
        self.body = body
        self.service = service

    def applies(self, trigger: str) -> bool:
        return trigger in self.triggers

    def head(self, extra: bytes = b"") -> bytes:
        """The static response's head; ``extra`` is field lines the proxy adds (request id, Via, Connection)."""
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        fields = b"".join(b"%b: %b\r\n" % (k, v) for k, v in self.headers)
        return b"HTTP/1.1 %d %b\r\n%bContent-Length: %d\r\n%b\r\n" % (
            self.status, reason.encode("latin-1"), fields, len(self.body), extra)
