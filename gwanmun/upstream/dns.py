"""DNS resolution for upstream hosts, cached for each answer's TTL (Kong's resolver semantics).

Order, as in Kong: IP literals are used as they are; then the hosts file; then DNS (A and AAAA) via dnspython,
whose answers carry the TTL that the system resolver (getaddrinfo) hides. A cached answer past its TTL is still
served for ``stale_ttl`` seconds while one background query refreshes it, so a DNS outage never stalls traffic.
Negative answers are cached for ``not_found_ttl``, errors for ``error_ttl``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.resolver

log = logging.getLogger("gwanmun.dns")


class ResolveError(Exception):
    """The name has no address (or the lookup failed and nothing stale is cached)."""


@dataclass(slots=True)
class _Entry:
    addresses: tuple[str, ...]
    expires: float
    error: str | None = None
    next: int = 0  # round-robin position among the addresses
    refreshing: bool = False


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_nameserver(ns: str) -> tuple[str, int | None]:
    if ns.startswith("["):
        host, _, port = ns[1:].partition("]:")
        return host.rstrip("]"), int(port) if port else None
    if ns.count(":") == 1:
        host, port = ns.split(":")
        return host, int(port)
    return ns, None


def read_hosts(path: str) -> dict[str, tuple[str, ...]]:
    hosts: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.split("#", 1)[0].split()
                if len(line) < 2 or not is_ip(line[0]):
                    continue
                for name in line[1:]:
                    hosts.setdefault(name.lower(), []).append(line[0])
    except OSError:
        return {}
    return {k: tuple(v) for k, v in hosts.items()}


@dataclass
class Resolver:
    hostsfile: str = "/etc/hosts"
    nameservers: list[str] = field(default_factory=list)
    stale_ttl: float = 3600.0
    not_found_ttl: float = 30.0
    error_ttl: float = 1.0
    valid_ttl: float | None = None  # overrides every answer's TTL when set
    timeout: float = 2.0

    def __post_init__(self) -> None:
        self._hosts = read_hosts(self.hostsfile) if self.hostsfile else {}
        self._cache: dict[str, _Entry] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _dns(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            try:
                r = dns.asyncresolver.Resolver(configure=not self.nameservers)
            except dns.resolver.NoResolverConfiguration:
                r = dns.asyncresolver.Resolver(configure=False)
            if self.nameservers:
                ips = []
                for ns in self.nameservers:  # "ip", "ip:port", "[v6]:port" or a bare v6 address
                    ip, port = _split_nameserver(ns)
                    ips.append(ip)
                    if port:
                        r.nameserver_ports[ip] = port
                r.nameservers = ips
            r.lifetime = self.timeout
            self._resolver = r
        return self._resolver

    def cached(self, host: str) -> str | None:
        """An address from the cache or hosts file, without I/O; None when a lookup is needed."""
        addrs = self._hosts.get(host)
        if addrs:
            return addrs[0]
        e = self._cache.get(host)
        if e is None or not e.addresses:
            return None
        now = time.monotonic()
        if now >= e.expires:
            if now >= e.expires + self.stale_ttl:
                return None
            self._refresh_soon(host, e)
        i = e.next
        e.next = (i + 1) % len(e.addresses)
        return e.addresses[i]

    async def resolve(self, host: str) -> str:
        addr = self.cached(host)
        if addr is not None:
            return addr
        e = self._cache.get(host)
        if e is not None and e.error and time.monotonic() < e.expires:
            raise ResolveError(e.error)
        e = await self._query(host)
        if not e.addresses:
            raise ResolveError(e.error or f"{host}: no address")
        e.next = 1 % len(e.addresses)
        return e.addresses[0]

    def _refresh_soon(self, host: str, e: _Entry) -> None:
        if e.refreshing:
            return
        e.refreshing = True

        async def refresh() -> None:
            try:
                await self._query(host)
            finally:
                e.refreshing = False

        asyncio.get_running_loop().create_task(refresh())

    async def _query(self, host: str) -> _Entry:
        r = self._dns()
        addresses: list[str] = []
        ttls: list[float] = []
        error: str | None = None
        not_found = False
        for rdtype in ("A", "AAAA"):
            try:
                answer = await r.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                not_found = True
                continue
            except (dns.exception.DNSException, OSError) as exc:
                error = f"{host}: {exc.__class__.__name__}"
                continue
            addresses.extend(rr.to_text() for rr in answer)
            ttls.append(answer.rrset.ttl if answer.rrset is not None else 0)
        now = time.monotonic()
        old = self._cache.get(host)
        if addresses:
            ttl = self.valid_ttl if self.valid_ttl is not None else min(ttls)
            e = _Entry(tuple(addresses), now + ttl)
        elif old is not None and old.addresses and now < old.expires + self.stale_ttl:
            log.warning("dns refresh of %s failed (%s); serving the stale answer", host, error or "no address")
            old.expires = now + self.error_ttl
            return old
        elif error and not not_found:
            e = _Entry((), now + self.error_ttl, error=error)
        else:
            e = _Entry((), now + self.not_found_ttl, error=f"{host}: name not found")
        self._cache[host] = e
        return e
