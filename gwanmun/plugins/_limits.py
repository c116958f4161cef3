"""What ``rate-limiting`` and ``limit-conn`` share: whom a request counts for (``limit_by``), and a limit's stable id.

**Identity** (Kong's rate-limiting ``limit_by``; each falls back to the client IP when the request has no such
identity, as Kong's does): ``consumer`` (the consumer's id, else the credential's), ``credential``, ``ip``
(``ctx.client_ip``: the peer, or the client named by a trusted proxy only, so a spoofed ``X-Forwarded-For`` never
makes a new key), ``service``, ``header`` (the value of ``header_name``), ``path`` (the request path, when it is
``path``), ``consumer-group`` (the consumer's first group).

**Stable ids.** Counters live in a store shared by workers (and, with Redis, by nodes), keyed by an id derived from
the plugin's name, its scope (the service, route and consumer it is attached to, by name or id, as Kong keys its
counters by the plugin's route and service) and the config fields that say what is counted (``fields``), never
from a Python object: so every worker of a node, every node, and the same plugin after a reload find the same
counters. Changing a limit keeps the counts, as Kong does; changing what is counted starts new ones. The scope is
read once, at the plugin's first request, from the runtime the request runs on.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import orjson

from .base import Ctx

LIMIT_BY = ("consumer", "credential", "ip", "service", "header", "path", "consumer-group")


def identity(limit_by: str, header_name: str | None = None, path: str | None = None) -> Callable[[Ctx], str]:
    """The function giving a request's key (build time: one small function per config, no branching per request)."""
    if limit_by == "ip":
        return _ip
    if limit_by == "consumer":
        return _consumer
    if limit_by == "credential":
        return _credential
    if limit_by == "service":
        return _service
    if limit_by == "consumer-group":
        return _group
    if limit_by == "header":
        name = header_name or ""

        def by_header(ctx: Ctx) -> str:
            return ctx.headers.get(name) or ctx.client_ip

        return by_header
    if limit_by == "path":
        want = path or ""

        def by_path(ctx: Ctx) -> str:
            return ctx.path if ctx.path == want else ctx.client_ip

        return by_path
    raise ValueError(f"unknown limit_by {limit_by!r}")


def _ip(ctx: Ctx) -> str:
    return ctx.client_ip


def _consumer(ctx: Ctx) -> str:
    c = ctx.consumer
    if c is not None:
        return c.id
    cred = ctx.credential
    return cred.id if cred is not None else ctx.client_ip


def _credential(ctx: Ctx) -> str:
    cred = ctx.credential
    return cred.id if cred is not None else ctx.client_ip


def _service(ctx: Ctx) -> str:
    s = ctx.service
    return (s.id or s.name or "") if s is not None else ctx.client_ip


def _group(ctx: Ctx) -> str:
    c = ctx.consumer
    groups = c.groups if c is not None else ()
    return groups[0] if groups else ctx.client_ip


def _ref(entity: Any) -> str | None:
    if entity is None:
        return None
    ref = getattr(entity, "id", None) or getattr(entity, "name", None) or getattr(entity, "username", None)
    if ref:
        return ref
    dump = getattr(entity, "model_dump", None)  # an unnamed route or service: what it is, less its children
    if dump is None:
        return "?"
    try:
        fields = {k: v for k, v in dump(mode="json").items() if k not in ("plugins", "routes")}
    except Exception:  # noqa: BLE001 - a scope we cannot describe is still a scope
        return "?"
    return "=" + hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def scope_of(plugin: Any, ctx: Ctx) -> tuple[str | None, str | None, str | None]:
    """(service, route, consumer) the plugin entity is attached to, from the runtime the request runs on; all None
    for a global plugin, or when the request carries no runtime (unit tests)."""
    rt = getattr(getattr(ctx, "ex", None), "rt", None)
    for s in getattr(rt, "plugins", None) or ():
        if s.plugin is plugin:
            return _ref(s.service), _ref(s.route), _ref(s.consumer)
    return None, None, None


def stable_id(name: str, scope: tuple, fields: dict) -> str:
    """A short id for (plugin name, scope, counted fields): the same in every worker, node and config version."""
    raw = orjson.dumps([name, list(scope), fields], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:20]
