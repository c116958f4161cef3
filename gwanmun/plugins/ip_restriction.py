"""ip-restriction (Kong priority 990): allow or deny clients by IP address or CIDR range.

Kong's rules: ``deny`` is checked first (a listed address is refused even if ``allow`` lists it too), then, when
``allow`` is set, an address it does not list is refused. The client is ``ctx.client_ip`` (the real client behind
trusted proxies). Refusals are ``status`` (403) with ``{"message": message}`` (Kong's default "Your IP address is not
allowed").

Hot path: the lists are compiled at build time into exact-address sets and integer ranges per IP version; the verdict
for an address string is cached in a small bounded dict, so a returning client costs one dict look-up.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator, model_validator

from ._traffic import Record
from .base import BuildEnv, Ctx, Plugin, Reply

DEFAULT_MESSAGE = "Your IP address is not allowed"
NO_CLIENT_IP = "Cannot identify the client IP address, unix domain sockets are not supported."
_CACHE_SIZE = 1024
_ALLOW, _DENY, _UNKNOWN = 0, 1, 2


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        # strict=False: Kong accepts host bits in a CIDR ("127.0.0.1/8" is 127.0.0.0/8)
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"invalid ip or cidr range: '{value}'") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and \
            net.prefixlen >= 96:
        # ::ffff:a.b.c.d/n: the client's address is compared in its IPv4 form
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False)
    return net


class _Matcher:
    """Exact addresses in a set of ints, ranges as (first, last) int pairs; one per IP version."""

    __slots__ = ("exact4", "exact6", "ranges4", "ranges6")

    def __init__(self, values: tuple[str, ...]) -> None:
        nets = [_network(v) for v in values]
        self.exact4 = frozenset(int(n.network_address) for n in nets if n.version == 4 and n.prefixlen == 32)
        self.exact6 = frozenset(int(n.network_address) for n in nets if n.version == 6 and n.prefixlen == 128)
        self.ranges4 = tuple(sorted({(int(n.network_address), int(n.broadcast_address))
                                     for n in nets if n.version == 4 and n.prefixlen < 32}))
        self.ranges6 = tuple(sorted({(int(n.network_address), int(n.broadcast_address))
                                     for n in nets if n.version == 6 and n.prefixlen < 128}))

    def match(self, version: int, addr: int) -> bool:
        if version == 4:
            if addr in self.exact4:
                return True
            ranges = self.ranges4
        else:
            if addr in self.exact6:
                return True
            ranges = self.ranges6
        for lo, hi in ranges:
            if lo <= addr <= hi:
                return True
        return False


class IpRestriction(Plugin):
    name = "ip-restriction"
    priority = 990

    class Config(Record):
        allow: tuple[str, ...] | None = Field(None, description="IP addresses or CIDR ranges to allow")
        deny: tuple[str, ...] | None = Field(None, description="IP addresses or CIDR ranges to deny")
        status: int | None = Field(None, description="status of refused requests (default 403)")
        message: str | None = Field(None, description="message of refused requests")

        @field_validator("allow", "deny")
        @classmethod
        def _ips(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
            if v is not None:
                for item in v:
                    _network(item)
            return v

        @field_validator("status")
        @classmethod
        def _status(cls, v: int | None) -> int | None:
            if v is not None and not 100 <= v <= 599:
                raise ValueError("value should be between 100 and 599")
            return v

        @model_validator(mode="after")
        def _one(self) -> IpRestriction.Config:
            if not self.allow and not self.deny:
                raise ValueError("at least one of these fields must be non-empty: 'config.allow', 'config.deny'")
            return self

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.allow = _Matcher(config.allow) if config.allow else None
        self.deny = _Matcher(config.deny) if config.deny else None
        self.status = config.status if config.status is not None else 403
        self.message = config.message if config.message is not None else DEFAULT_MESSAGE
        self.cache: dict[str, int] = {}

    def verdict(self, ip: str) -> int:
        """_ALLOW, _DENY, or _UNKNOWN (not an IP address); cached per address string."""
        v = self.cache.get(ip)
        if v is not None:
            return v
        try:
            a = ipaddress.ip_address(ip.split("%", 1)[0] if "%" in ip else ip)  # drop an IPv6 zone
        except ValueError:
            return _UNKNOWN
        if a.version == 6 and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        version, n = a.version, int(a)
        if self.deny is not None and self.deny.match(version, n):
            v = _DENY
        elif self.allow is not None and not self.allow.match(version, n):
            v = _DENY
        else:
            v = _ALLOW
        cache = self.cache
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[ip] = v
        return v

    def access(self, ctx: Ctx) -> Reply | None:
        v = self.verdict(ctx.client_ip)
        if v == _ALLOW:
            return None
        if v == _DENY:
            return Reply.error_(self.status, self.message)
        return Reply.error_(403, NO_CLIENT_IP)

    def carry_over(self, old: Plugin) -> None:
        if isinstance(old, IpRestriction):
            self.cache = old.cache
