"""Config -> Runtime. Pure: no I/O, no sockets; the same input always builds the same runtime.

Everything the request path needs is precomputed here: the router's indexes, each service's balancer and the
``Host`` value of each target, timeouts in seconds, the trusted networks.
"""

from __future__ import annotations

import ipaddress

from ..routing.router import RouteEntry, Router
from ..runtime import Runtime, Service, Settings
from ..upstream.balancer import RoundRobin, Target
from .load import LoadedConfig

_DEFAULT_PORT = {"http": 80, "https": 443}


def _host_header(host: str, port: int, scheme: str) -> bytes:
    """Kong's rule: the target's host, plus ``:port`` unless the port is the scheme's default."""
    shown = f"[{host}]" if ":" in host else host
    if _DEFAULT_PORT.get(scheme) != port:
        shown = f"{shown}:{port}"
    return shown.encode("idna" if not shown.isascii() else "ascii")


def compile_settings(gw) -> Settings:
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in gw.trusted_ips)
    name = gw.request_id_header
    return Settings(
        trusted=nets,
        request_id_header=name.encode("latin-1"),
        request_id_lower=name.lower().encode("latin-1"),
        via=gw.via_header,
        max_request_line=gw.max_request_line,
        max_header_size=gw.max_header_size,
        max_headers=gw.max_headers,
        keepalive_timeout=gw.keepalive_timeout,
    )


def compile_runtime(loaded: LoadedConfig) -> Runtime:
    cfg = loaded.config

    services: list[Service] = []
    for s in cfg.services:
        scheme = s.protocol
        u = cfg.upstream_for(s)
        if u is not None:
            targets = tuple(
                Target(
                    host=t.host,
                    port=t.port,
                    weight=t.weight,
                    host_header=_host_header(u.host_header, t.port, scheme) if u.host_header
                    else _host_header(t.host, t.port, scheme),
                )
                for t in cfg.targets_for(u)  # nested and top-level targets
            )
        else:
            targets = (Target(host=s.host, port=s.port, host_header=_host_header(s.host, s.port, scheme)),)
        svc = Service(
            name=s.name,
            id=s.id,
            path=s.path,
            retries=s.retries,
            connect_timeout=s.connect_timeout / 1000,
            read_timeout=s.read_timeout / 1000,
            write_timeout=s.write_timeout / 1000,
            balancer=RoundRobin(targets),
            upstream=u.name if u is not None else None,
        )
        services.append(svc)

    by_service = {id(s): svc for s, svc in zip(cfg.services, services)}
    entries: list[RouteEntry] = []
    for route, s in cfg.all_routes():
        if not s.enabled:
            continue  # Kong: the routes of a disabled service are not served
        entries.append(
            RouteEntry(
                name=route.name,
                id=str(route.id) if route.id else None,
                protocols=frozenset(route.protocols),
                methods=frozenset(route.methods or ()),
                hosts=tuple(route.hosts or ()),
                paths=tuple(route.paths or ()),
                headers=tuple((k, tuple(v)) for k, v in (route.headers or {}).items()),
                regex_priority=route.regex_priority,
                strip_path=route.strip_path,
                path_handling=route.path_handling,
                preserve_host=route.preserve_host,
                target=by_service[id(s)],
                index=len(entries),
            )
        )

    return Runtime(
        router=Router(entries),
        settings=compile_settings(cfg.gateway),
        services=tuple(services),
        config_hash=loaded.hash,
        source=loaded.source,
        gateway=cfg.gateway,
    )
