"""The compiled, immutable snapshot the data plane serves from, and the holder that swaps it.

A config is validated and compiled into a ``Runtime`` off the request path; the worker then swaps one reference.
Each request reads ``holder.current`` once, when its headers are complete, and keeps that runtime to its end, so a
reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import orjson

from .http.wire import request_fields, response_fields
from .upstream.balancer import Balancer


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
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    max_connections: int = 16384
    # request hardening: arguments of http.validate.check_request_head and http.normalize.split_target
    underscores_in_headers: bool = False
    merge_slashes: bool = True
    reject_escaped_slashes: bool = False
    # header name -> how the proxy treats it (see http.wire.field_table); they depend on the request id's name
    request_fields: dict[bytes, int] = field(default_factory=request_fields)
    response_fields: dict[bytes, int] = field(default_factory=response_fields)

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
    balancer: Balancer  # RoundRobin, LeastConnections, Latency or ConsistentHashing (upstream/balancer.py)
    upstream: str | None = None  # name of the Kong upstream entity balanced over, if any
    request_timeout: float = 0.0  # overall deadline per request, seconds; 0: none
    # resilience.registry.ServiceResilience (breaker, retry, bulkhead, fallback settings), or None: the per-worker
    # state is in Worker.resilience, by service name, so that it survives reloads
    resilience: Any = None
    fallback_to: Any = None  # the Service a fallback sends requests to (resilience.fallback.service), or None
    label: str = ""  # for logs: the name, else the id (a field, not a property: the access log reads it per request)
    log_name: bytes = b""  # the name (else id, else null) JSON-encoded once, for the access log

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.name or self.id or "unnamed"
        if not self.log_name:
            self.log_name = orjson.dumps(self.name or self.id)


@dataclass(eq=False, slots=True)
class Runtime:
    router: Any  # routing.Router
    settings: Settings
    services: tuple[Service, ...] = ()
    config_hash: str = ""
    source: str = ""
    gateway: Any = None  # the validated GatewayConfig, for what only the server reads (listeners, logs, pools)
    tls: Any = None  # tls.ServerTLS: certificates by SNI for HTTPS listeners (None without one)
    health: tuple = ()  # upstream.health.HealthSpec of every upstream: its targets and its compiled healthchecks
    plugins: tuple = ()  # plugins.chain.Scoped: every plugin built for this config (for carry-over and aclose)
    env: Any = None  # plugins.base.BuildEnv: consumers and credentials
    jwks: Any = None  # (path, JSON body) of the passport JWKS, served before routing; None: not served


class RuntimeHolder:
    """Holds the current runtime; ``swap`` replaces it atomically (one reference assignment)."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime

    def swap(self, runtime: Runtime) -> Runtime:
        old, self.current = self.current, runtime
        return old
