"""Config -> Runtime. No sockets; the same input always builds the same runtime (the only I/O: reading
``gateway.ssl_cert`` files, and a generated default certificate, made once per process, when there is none).

Everything the request path needs is precomputed here: the router's indexes, each service's balancer and the
``Host`` value of each target, timeouts in seconds, the trusted networks, TLS contexts (gwanmun/tls.py): one per
certificate for HTTPS listeners and one per distinct upstream TLS setting.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid

from ..http.wire import request_fields, response_fields
from ..plugins import registry as plugin_registry
from ..plugins.base import BasicCredential, BuildEnv, Consumer, JwtSecret, KeyCredential
from ..plugins.chain import Scoped, build_plugin, route_chain
from ..resilience.fault import FaultSpec
from ..resilience.registry import ServiceResilience
from ..upstream.mirror import MirrorSpec
from ..routing.identity import compile_splits
from ..routing.router import RouteEntry
from ..routing.schemes import build_router
from .model import parse_host_port
from ..runtime import Runtime, Service, Settings
from ..upstream.balancer import Balancer, ConsistentHashing, LeastConnections, Latency, RoundRobin, Target
from ..upstream.hashing import HashSpec
from ..upstream.health import compile_healthchecks
from ..errors import ConfigError, ConfigIssue
from .load import LoadedConfig

_DEFAULT_PORT = {"http": 80, "https": 443}


def _host_header(host: str, port: int, scheme: str) -> bytes:
    """Kong's rule: the target's host, plus ``:port`` unless the port is the scheme's default."""
    shown = f"[{host}]" if ":" in host else host
    if _DEFAULT_PORT.get(scheme) != port:
        shown = f"{shown}:{port}"
    return shown.encode("idna" if not shown.isascii() else "ascii")


def _upstream_host_header(value: str, port: int, scheme: str) -> bytes:
    """An upstream's ``host_header``: sent as written when it has a port, else like a target's host."""
    _, host, has_port = parse_host_port(value)
    if has_port is not None:
        return value.encode("idna" if not value.isascii() else "ascii")
    return _host_header(host, port, scheme)


def compile_settings(gw) -> Settings:
    nets = tuple(ipaddress.ip_network(n, strict=False) for n in gw.trusted_ips)
    name = gw.request_id_header
    rid_lower = name.lower().encode("latin-1")
    return Settings(
        trusted=nets,
        request_id_header=name.encode("latin-1"),
        request_id_lower=rid_lower,
        via=gw.via_header,
        max_request_line=gw.max_request_line,
        max_header_size=gw.max_header_size,
        max_headers=gw.max_headers,
        keepalive_timeout=gw.keepalive_timeout,
        client_header_timeout=gw.client_header_timeout,
        client_body_timeout=gw.client_body_timeout,
        max_connections=gw.max_connections,
        underscores_in_headers=gw.underscores_in_headers,
        merge_slashes=gw.merge_slashes,
        reject_escaped_slashes=gw.escaped_slashes == "reject",
        request_fields=request_fields(rid_lower),
        response_fields=response_fields(rid_lower),
    )


def _upstream_tls(cfg, s, u, cache: dict):
    """The client TLS settings of an https service (gwanmun/tls.py), shared by services with the same ones."""
    from ..tls import build_upstream_tls

    ref = s.client_certificate or (u.client_certificate if u is not None else None)  # Kong: the upstream's as fallback
    cert = cfg.get_certificate(ref) if ref else None
    cas = [cfg.get_ca_certificate(i) for i in s.ca_certificates or ()]
    return build_upstream_tls(
        verify=bool(s.tls_verify),
        depth=s.tls_verify_depth,
        ca_pems=[c.cert for c in cas if c is not None],
        client_cert=(cert.cert, cert.key) if cert is not None else None,
        cache=cache,
    )


def _sni(host: str) -> str:
    """The SNI for a target: Kong sends the Host it sends upstream (nginx ``proxy_ssl_name $upstream_host``), which
    nginx sends without its port."""
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _label(host: str, port: int) -> str:
    """A target's ``host:port`` as ``balancer.Target.label`` spells it: the key of its health state."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hash_spec(u) -> HashSpec:
    """An upstream's hash settings (gwanmun/upstream/hashing.py)."""
    return HashSpec(
        on=u.hash_on,
        on_header=u.hash_on_header or "",
        on_query_arg=u.hash_on_query_arg or "",
        on_uri_capture=u.hash_on_uri_capture or "",
        fallback=u.hash_fallback,
        fallback_header=u.hash_fallback_header or "",
        fallback_query_arg=u.hash_fallback_query_arg or "",
        fallback_uri_capture=u.hash_fallback_uri_capture or "",
        cookie=u.hash_on_cookie or "",
        cookie_path=u.hash_on_cookie_path,
    )


def build_balancer(u, targets: tuple[Target, ...]) -> Balancer:
    """The balancer for the upstream's ``algorithm`` (round-robin for a service without an upstream). ``hash_on``
    is used by consistent-hashing only (its ``hashing`` is None when ``hash_on`` is ``none``)."""
    algorithm = u.algorithm if u is not None else "round-robin"
    if algorithm == "least-connections":
        return LeastConnections(targets)
    if algorithm == "latency":
        return Latency(targets)
    if algorithm == "consistent-hashing":
        return ConsistentHashing(targets, hash_spec(u) if u.hash_on != "none" else None, slots=u.slots)
    return RoundRobin(targets)


def compile_runtime(loaded: LoadedConfig) -> Runtime:
    cfg = loaded.config

    tls_cache: dict = {}
    services: list[Service] = []
    # One balancer per upstream, as in Kong: services that use the same upstream with the same scheme and TLS settings
    # (so the same targets, Host and SNI) share it, with its targets, their pools and its counters.
    balancers: dict[tuple[int, str, int], Balancer] = {}
    for s in cfg.services:
        scheme = s.protocol
        u = cfg.upstream_for(s)
        tls = _upstream_tls(cfg, s, u, tls_cache) if scheme == "https" else None
        shared = balancers.get((id(u), scheme, id(tls))) if u is not None else None
        if shared is not None:
            targets = shared.targets
        elif u is not None:
            targets = tuple(
                Target(
                    host=t.host,
                    port=t.port,
                    weight=t.weight,
                    host_header=_upstream_host_header(u.host_header, t.port, scheme) if u.host_header
                    else _host_header(t.host, t.port, scheme),
                    tls=tls,
                    sni=_sni(u.host_header or t.host).lower() if tls is not None else "",
                )
                for t in cfg.targets_for(u)  # nested and top-level targets
            )
        else:
            targets = (Target(host=s.host, port=s.port, host_header=_host_header(s.host, s.port, scheme), tls=tls,
                              sni=s.host.lower() if tls is not None else ""),)
        svc = Service(
            name=s.name,
            id=s.id,
            path=s.path,
            retries=s.retries,
            connect_timeout=s.connect_timeout / 1000,
            read_timeout=s.read_timeout / 1000,
            write_timeout=s.write_timeout / 1000,
            request_timeout=s.request_timeout / 1000,
            balancer=shared if shared is not None else build_balancer(u, targets),
            upstream=u.name if u is not None else None,
            resilience=_resilience(s),
        )
        services.append(svc)
        if u is not None:
            balancers[(id(u), scheme, id(tls))] = svc.balancer

    by_service = {id(s): svc for s, svc in zip(cfg.services, services)}
    env, scoped = compile_plugins(cfg, loaded.source, loaded.lines)
    for s, svc in zip(cfg.services, services):
        if s.fallback is not None and s.fallback.service is not None:
            svc.fallback_to = by_service[id(cfg.get_service(s.fallback.service))]
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
                https_redirect_status_code=route.https_redirect_status_code,
                target=_with_route_timeouts(by_service[id(s)], route),
                fault=_fault_spec(route.fault),
                mirror=_mirror_spec(cfg, route.mirror, by_service),
                plugins=route_chain(scoped, route, s) if scoped else None,
                splits=compile_splits(route.splits, lambda ref: by_service[id(cfg.get_service(ref))]),
                index=len(entries),
            )
        )

    server_tls = None
    if any(tls for _, _, tls in cfg.gateway.listeners()):
        from ..tls import build_server_tls

        server_tls = build_server_tls(cfg)

    health = tuple(
        compile_healthchecks(u.name, u.healthchecks, ((_label(t.host, t.port), t.host, t.port)
                                                      for t in cfg.targets_for(u)))
        for u in cfg.upstreams
    )

    return Runtime(
        router=build_router(entries),
        settings=compile_settings(cfg.gateway),
        services=tuple(services),
        config_hash=loaded.hash,
        source=loaded.source,
        gateway=cfg.gateway,
        tls=server_tls,
        health=health,
        plugins=tuple(scoped),
        env=env,
        jwks=_jwks(cfg.gateway.passport),
    )


def _with_route_timeouts(svc: Service, route) -> Service:
    """The service as this route's requests see it: a route's own timeouts override the service's. A copy that
    shares the balancer (and so the targets and their pools), so the proxy reads one set of timeouts."""
    changes = {
        name: getattr(route, name) / 1000
        for name in ("connect_timeout", "read_timeout", "write_timeout", "request_timeout")
        if getattr(route, name) is not None
    }
    return dataclasses.replace(svc, **changes) if changes else svc


def compile_plugins(cfg, source: str = "", lines=None) -> tuple[BuildEnv, list[Scoped]]:
    """Consumers and credentials as the plugins see them, and every enabled plugin entity built, with its scope."""
    env = BuildEnv(source=source, passport=cfg.gateway.passport)
    groups: dict[str, list[Consumer]] = {g.name: [] for g in cfg.consumer_groups}
    group_names = {g.id: g.name for g in cfg.consumer_groups if g.id} | {g.name: g.name for g in cfg.consumer_groups}
    by_cfg: dict[int, Consumer] = {}
    for c in cfg.consumers:
        names = tuple(group_names[g] for g in c.groups if g in group_names)
        consumer = Consumer(id=c.id or _stable_id("consumer", c.username or c.custom_id or ""), username=c.username,
                            custom_id=c.custom_id, groups=names, tags=tuple(c.tags))
        by_cfg[id(c)] = consumer
        env.consumers[consumer.id] = consumer
        for key in (c.username, c.custom_id):
            if key:
                env.consumers_by_name.setdefault(key, consumer)
        for g in names:
            groups[g].append(consumer)
    env.groups = {g: tuple(m) for g, m in groups.items()}

    def owner(c, cred) -> Consumer:
        return by_cfg[id(c)] if c is not None else env.consumer(cred.consumer)  # type: ignore[return-value]

    acl: dict[int, list[str]] = {}
    for c, items in [(c, c.keyauth_credentials) for c in cfg.consumers] + [(None, cfg.keyauth_credentials)]:
        for k in items:
            env.keyauth.append(KeyCredential(
                id=k.id or _stable_id("keyauth", k.key or k.key_hash or ""), key=k.key if k.key is not None
                else k.key_hash, hashed=k.key is None, consumer=owner(c, k), tags=tuple(k.tags)))
    for c, items in [(c, c.basicauth_credentials) for c in cfg.consumers] + [(None, cfg.basicauth_credentials)]:
        for b in items:
            env.basicauth.append(BasicCredential(id=b.id or _stable_id("basicauth", b.username), username=b.username,
                                                 password=b.password, consumer=owner(c, b), tags=tuple(b.tags)))
    for c, items in [(c, c.jwt_secrets) for c in cfg.consumers] + [(None, cfg.jwt_secrets)]:
        for j in items:
            env.jwt_secrets.append(JwtSecret(id=j.id or _stable_id("jwt", j.key), key=j.key, algorithm=j.algorithm,
                                             secret=j.secret, rsa_public_key=j.rsa_public_key, consumer=owner(c, j),
                                             tags=tuple(j.tags)))
    for c, items in [(c, c.acls) for c in cfg.consumers] + [(None, cfg.acls)]:
        for a in items:
            acl.setdefault(id(owner(c, a)), []).append(a.group)
    for consumer in env.consumers.values():
        if id(consumer) in acl:
            consumer.acl_groups = tuple(dict.fromkeys(acl[id(consumer)]))

    routes = {}
    for route, _ in cfg.all_routes():
        for key in (route.name, route.id):
            if key:
                routes.setdefault(key, route)
    scoped: list[Scoped] = []

    def add(path: tuple, p, service=None, route=None, consumer=None) -> None:
        if not p.enabled:
            return
        cls = plugin_registry.get(p.name)
        assert cls is not None  # load rejected unknown plugins
        service = service or (cfg.get_service(p.service) if p.service else None)
        route = route or (routes.get(p.route) if p.route else None)
        consumer = consumer or (env.consumer(p.consumer) if p.consumer else None)
        try:
            plugin = build_plugin(cls, p.config, env)
        except (ValueError, TypeError) as exc:  # what only building can tell (an unknown anonymous consumer, ...)
            line = _line_of(lines, path) if lines else None
            raise ConfigError([ConfigIssue(path + ("config",), str(exc), source, line)]) from None
        scoped.append(Scoped(plugin, service, route, consumer))

    for i, p in enumerate(cfg.plugins):
        add(("plugins", i), p)
    for i, s in enumerate(cfg.services):
        for j, p in enumerate(s.plugins):
            add(("services", i, "plugins", j), p, service=s)
        for j, route in enumerate(s.routes):
            for k, p in enumerate(route.plugins):
                add(("services", i, "routes", j, "plugins", k), p, route=route)
    for i, route in enumerate(cfg.routes):
        for j, p in enumerate(route.plugins):
            add(("routes", i, "plugins", j), p, route=route)
    for i, c in enumerate(cfg.consumers):
        for j, p in enumerate(c.plugins):
            add(("consumers", i, "plugins", j), p, consumer=by_cfg[id(c)])
    return env, scoped


def _line_of(lines, path: tuple) -> int | None:
    for n in range(len(path), -1, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return None


def _jwks(settings) -> tuple[str, bytes] | None:
    """(path, JSON body) of the passport keys' JWKS, served on the proxy listeners; None without keys or path."""
    if settings is None or settings.jwks_path is None:
        return None
    from ..passport import PassportSigner

    import orjson

    signer = PassportSigner([k.model_dump() for k in settings.keys], issuer=settings.issuer)
    return settings.jwks_path, orjson.dumps(signer.jwks())


def _stable_id(kind: str, key: str) -> str:
    """An id for an entity written without one: the same across reloads (a UUID derived from its natural key)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gwanmun:{kind}:{key}"))


def _resilience(s) -> ServiceResilience | None:
    if s.circuit_breaker is None and s.retry is None and s.bulkhead is None and s.fallback is None:
        return None
    return ServiceResilience(
        s.circuit_breaker.compile() if s.circuit_breaker is not None else None,
        s.retry.compile() if s.retry is not None else None,
        s.bulkhead.compile() if s.bulkhead is not None else None,
        s.fallback.compile() if s.fallback is not None else None,
    )


def _mirror_spec(cfg, m, by_service) -> MirrorSpec | None:
    if m is None or m.percentage <= 0:
        return None
    return MirrorSpec(by_service[id(cfg.get_service(m.service))], m.percentage, m.body_limit)


def _fault_spec(cfg) -> FaultSpec | None:
    if cfg is None or (cfg.delay is None and cfg.abort is None):
        return None
    d, a = cfg.delay, cfg.abort
    return FaultSpec(
        delay_s=d.duration / 1000 if d else 0.0,
        delay_percent=d.percentage if d else 0.0,
        delay_header=d.header.lower().encode("latin-1") if d and d.header else b"",
        abort_status=a.status if a else 0,
        abort_percent=a.percentage if a else 0.0,
        abort_header=a.header.lower().encode("latin-1") if a and a.header else b"",
    )
