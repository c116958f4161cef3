"""The compiled, immutable snapshot the data plane serves from, and the holder that swaps it.

A config is validated and compiled into a ``Runtime`` off the request path; the worker then swaps one reference.
Each request reads ``holder.current`` once, when its headers are complete, and keeps that runtime to its end, so a
reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .upstream.balancer import RoundRobin


@dataclass(frozen=True, slots=True)
class Settings:
    """Gateway-wide settings, compiled from the config's ``gateway`` section."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    request_id_header: bytes = b"X-Request-ID"
    request_id_lower: bytes = b"x-request-id"
    via: bool = True
    max_request_line: int = 8192
    max_header_size: int = 61440
    max_headers: int = 100
    keepalive_timeout: float = 75.0

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted or not ip:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


@dataclass(eq=False, slots=True)
class Service:
    """A compiled Kong service: where to send, how long to wait, how often to retry."""

    name: str | None
    id: str | None
    path: str | None
    retries: int
    connect_timeout: float  # seconds (Kong configures milliseconds)
    read_timeout: float
    write_timeout: float
    balancer: RoundRobin
    upstream: str | None = None  # name of the Kong upstream entity balanced over, if any

    @property
    def label(self) -> str:
        return self.name or self.id or "unnamed"


@dataclass(eq=False, slots=True)
class Runtime:
    router: Any  # routing.Router
    settings: Settings
    services: tuple[Service, ...] = ()
    config_hash: str = ""
    source: str = ""
    gateway: Any = None  # the validated GatewayConfig, for what only the server reads (listeners, logs, pools)


class RuntimeHolder:
    """Holds the current runtime; ``swap`` replaces it atomically (one reference assignment)."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime

    def swap(self, runtime: Runtime) -> Runtime:
        old, self.current = self.current, runtime
        return old
