"""The stored form of a config: one canonical declarative document per version, with every entity flat.

A **flat document** is a Kong 3.x declarative config (it loads with ``gwanmun.config.load_data`` like any file) in
which every entity has an ``id`` (a UUID), ``created_at``/``updated_at`` (Unix seconds, as Kong's Admin API shows
them; the loader ignores them, so they never change the config hash) and sits in its own top-level list: routes
name their service by id, targets their upstream, SNIs their certificate, credentials and consumer-scoped plugins
their consumer. Nothing is nested and there is no ``gateway:`` block (those are each node's own settings). It is what
the Admin API reads and edits (Kong's database is flat too) and what each version stores, as canonical JSON.

- ``flatten``: any valid document (nested as people write it, flat, or mixed) -> a flat one. An entity without an
  id takes the id of the same entity in the previous version (same kind and natural key: a service's name, a
  target's address in its upstream, ...), else a UUID derived from that key, so syncing the same file twice changes
  nothing, and a dump synced back keeps every id.
- ``normalize``: every entity as the config model reads it (defaults written out, hosts lower-cased, ``url`` split
  into protocol/host/port/path), with its id and timestamps.
- ``nest``: the other way, for ``gwanmun config dump`` (routes under their service, ...), defaults left out.
- ``changes`` (entity by entity) and ``text_diff`` (unified diff of the nested YAML, secrets masked).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from ..config import model as m

FORMAT_VERSION = "3.0"
_NS = uuid.UUID("5b4f0d8e-3c1a-4e52-9a7f-6f1d2c3b4a59")  # for ids derived from natural keys


@dataclass(frozen=True)
class Kind:
    """One entity kind of the flat document and its Admin API names."""

    key: str  # the document's list: "keyauth_credentials"
    api: str  # the top-level collection path: "key-auths"
    model: type[BaseModel]
    endpoint_keys: tuple[str, ...] = ()  # fields that name an entity in a URL besides its id
    refs: dict[str, str] = field(default_factory=dict)  # reference field -> the kind it points to
    parent: str | None = None  # the reference that nests it (route -> "service")
    nested_api: str | None = None  # its path under the parent: /consumers/{c}/key-auth
    nested: tuple[str, ...] = ()  # list fields of the model that hold nested entities (flat: always empty)
    unique: tuple[tuple[str, ...], ...] = ()  # unique together (a conflict is Kong's 409)
    secrets: tuple[str, ...] = ()  # fields masked in diffs

    @property
    def singular(self) -> str:
        return SINGULAR[self.key]


_CREDENTIAL_LISTS = ("keyauth_credentials", "basicauth_credentials", "jwt_secrets", "acls")

KINDS: dict[str, Kind] = {
    k.key: k
    for k in (
        Kind("services", "services", m.ServiceConfig, ("name",), nested=("routes", "plugins"), unique=(("name",),)),
        Kind("routes", "routes", m.RouteConfig, ("name",), {"service": "services"}, "service", "routes",
             nested=("plugins",), unique=(("name",),)),
        Kind("upstreams", "upstreams", m.UpstreamConfig, ("name",), nested=("targets",), unique=(("name",),)),
        Kind("targets", "targets", m.TargetConfig, ("target",), {"upstream": "upstreams"}, "upstream", "targets",
             unique=(("upstream", "target"),)),
        Kind("certificates", "certificates", m.CertificateConfig, nested=("snis",), secrets=("key", "key_alt")),
        Kind("snis", "snis", m.SniConfig, ("name",), {"certificate": "certificates"}, "certificate", "snis",
             unique=(("name",),)),
        Kind("ca_certificates", "ca_certificates", m.CACertificateConfig),
        Kind("consumers", "consumers", m.ConsumerConfig, ("username", "custom_id"),
             nested=(*_CREDENTIAL_LISTS, "plugins"), unique=(("username",), ("custom_id",))),
        Kind("consumer_groups", "consumer_groups", m.ConsumerGroupConfig, ("name",), unique=(("name",),)),
        Kind("plugins", "plugins", m.PluginEntityConfig, ("instance_name",),
             {"service": "services", "route": "routes", "consumer": "consumers"},
             unique=(("name", "service", "route", "consumer", "instance_name"), ("instance_name",))),
        Kind("keyauth_credentials", "key-auths", m.KeyauthCredentialConfig, ("key",), {"consumer": "consumers"},
             "consumer", "key-auth", unique=(("key",),), secrets=("key",)),
        Kind("basicauth_credentials", "basic-auths", m.BasicauthCredentialConfig, ("username",),
             {"consumer": "consumers"}, "consumer", "basic-auth", unique=(("username",),), secrets=("password",)),
        Kind("jwt_secrets", "jwts", m.JwtSecretConfig, ("key",), {"consumer": "consumers"}, "consumer", "jwt",
             unique=(("key",),), secrets=("secret",)),
        Kind("acls", "acls", m.AclConfig, ("group",), {"consumer": "consumers"}, "consumer", "acls",
             unique=(("consumer", "group"),)),
    )
}

SINGULAR = {
    "services": "service", "routes": "route", "upstreams": "upstream", "targets": "target",
    "certificates": "certificate", "snis": "sni", "ca_certificates": "ca_certificate", "consumers": "consumer",
    "consumer_groups": "consumer_group", "plugins": "plugin", "keyauth_credentials": "keyauth_credential",
    "basicauth_credentials": "basicauth_credential", "jwt_secrets": "jwt_secret", "acls": "acl",
}

# what deleting an entity does to the entities that reference it (Kong's on_delete): cascade or restrict
CASCADE = {
    ("routes", "service"): "restrict",
    ("plugins", "service"): "cascade",
    ("plugins", "route"): "cascade",
    ("plugins", "consumer"): "cascade",
    ("targets", "upstream"): "cascade",
    ("snis", "certificate"): "cascade",
    **{(k, "consumer"): "cascade" for k in _CREDENTIAL_LISTS},
}

TIMESTAMPS = ("created_at", "updated_at")


def empty() -> dict[str, Any]:
    return {"_format_version": FORMAT_VERSION}


def entities(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    value = doc.get(kind)
    return value if isinstance(value, list) else []


def canonical_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def doc_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def now() -> int:
    return int(time.time())


# --------------------------------------------------------------------------------------------------------------
# references and keys
# --------------------------------------------------------------------------------------------------------------


def ref_value(v: Any) -> str | None:
    """A reference as a string: ``"x"``, ``{"id": "x"}`` or ``{"name": "x"}`` -> ``"x"``; else None."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and len(v) == 1:
        inner = next(iter(v.values()))
        if next(iter(v)) in ("id", "name") and isinstance(inner, str):
            return inner
    return None


def find(doc: dict[str, Any], kind: str, key: str, scope: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The entity of ``kind`` whose id is ``key``, else whose endpoint key is (in ``scope``: {field: id})."""
    items = [e for e in entities(doc, kind) if not scope or all(e.get(f) == v for f, v in scope.items())]
    for e in items:
        if e.get("id") == key:
            return e
    for name in KINDS[kind].endpoint_keys:
        for e in items:
            if e.get(name) == key:
                return e
    return None


def natural_key(kind: str, e: dict[str, Any]) -> str | None:
    """What identifies an entity apart from its id (None: nothing does)."""
    if kind in ("services", "routes", "upstreams", "consumer_groups", "snis"):
        name = e.get("name")
        if kind == "snis" and isinstance(name, str):
            name = name.lower()
        return name if isinstance(name, str) else None
    if kind == "consumers":
        u, c = e.get("username"), e.get("custom_id")
        return f"{u or ''}\x00{c or ''}" if (u or c) else None
    if kind == "targets":
        return f"{ref_value(e.get('upstream')) or ''}\x00{e.get('target')}"
    if kind == "plugins":
        refs = "\x00".join(str(ref_value(e.get(f)) or "") for f in ("service", "route", "consumer"))
        return f"{e.get('name')}\x00{e.get('instance_name') or ''}\x00{refs}"
    if kind == "keyauth_credentials":
        return e.get("key") or e.get("key_hash")
    if kind in ("basicauth_credentials",):
        return e.get("username")
    if kind == "jwt_secrets":
        return e.get("key")
    if kind == "acls":
        return f"{ref_value(e.get('consumer')) or ''}\x00{e.get('group')}"
    if kind in ("certificates", "ca_certificates"):
        cert = e.get("cert")
        return hashlib.sha256(cert.encode()).hexdigest() if isinstance(cert, str) else None
    return None


def label(kind: str, e: dict[str, Any]) -> str:
    """A short human name for an entity (history, diffs)."""
    for f in ("name", "username", "custom_id", "target", "group", "instance_name"):
        v = e.get(f)
        if isinstance(v, str) and v:
            if kind == "plugins":
                return str(e.get("name"))
            return v
    if kind == "jwt_secrets" and isinstance(e.get("key"), str):
        return e["key"]
    if kind == "keyauth_credentials" and isinstance(e.get("key"), str):
        return e["key"][:4] + "..."  # the key is the secret
    return str(e.get("id") or "?")


def derived_id(kind: str, key: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{key}"))


# --------------------------------------------------------------------------------------------------------------
# flatten
# --------------------------------------------------------------------------------------------------------------


def flatten(data: dict[str, Any], previous: dict[str, Any] | None = None, *, stamp: int | None = None) -> dict:
    """A valid declarative document (as people write it: nested, flat or both) -> a flat document.

    ``data`` must already have passed ``load_data`` (references resolve). Ids: kept when given, else the previous
    version's id for the same natural key, else derived from the key. Timestamps: kept from the previous version
    for an unchanged entity. The result still needs ``normalize``.
    """
    previous = previous or empty()
    stamp = now() if stamp is None else stamp
    out: dict[str, Any] = {"_format_version": FORMAT_VERSION}
    lists: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}

    def take(kind: str, e: Any, **refs: str) -> dict[str, Any]:
        e = dict(e) if isinstance(e, dict) else {"name": e}  # certificates' snis may be plain names
        for f, v in refs.items():
            e[f] = v
        for f in KINDS[kind].nested:
            e.pop(f, None)
        lists[kind].append(e)
        return e

    # 1. unnest (parents get their ids first, so children can point at them)
    pending: list[tuple[str, dict, dict, str]] = []  # (kind, raw parent, flat parent, parent ref field)
    for kind in KINDS:
        for raw in entities(data, kind):
            flat = take(kind, raw)
            pending.append((kind, raw, flat, ""))
    for kind, raw, flat, _ in pending:
        _assign_id(kind, flat, previous)
    for kind, raw, flat, _ in list(pending):
        pid = flat["id"]
        children: list[tuple[str, list, str]] = []
        if kind == "services":
            children = [("routes", raw.get("routes") or [], "service"), ("plugins", raw.get("plugins") or [], "service")]
        elif kind == "routes":
            children = [("plugins", raw.get("plugins") or [], "route")]
        elif kind == "upstreams":
            children = [("targets", raw.get("targets") or [], "upstream")]
        elif kind == "certificates":
            children = [("snis", raw.get("snis") or [], "certificate")]
        elif kind == "consumers":
            children = [(k, raw.get(k) or [], "consumer") for k in (*_CREDENTIAL_LISTS, "plugins")]
        for child_kind, items, ref in children:
            for item in items:
                child = take(child_kind, item, **{ref: pid})
                _assign_id(child_kind, child, previous)
                if child_kind == "routes":  # a nested route's own nested plugins
                    for p in (item.get("plugins") or []) if isinstance(item, dict) else []:
                        plugin = take("plugins", p, route=child["id"])
                        _assign_id("plugins", plugin, previous)

    # 2. references by name -> by id
    for kind, k in KINDS.items():
        for e in lists[kind]:
            for f, target in k.refs.items():
                v = ref_value(e.get(f))
                if v is None:
                    if f in e and e[f] is None:
                        continue
                    continue
                found = find({target: lists[target]}, target, v)
                e[f] = found["id"] if found is not None else v

    # 3. ids that were derived before their references were resolved (targets, acls, plugins) are derived again
    for kind in ("targets", "acls", "plugins"):
        for e in lists[kind]:
            if e.pop("_derived", False):
                del e["id"]
                _assign_id(kind, e, previous)
    for kind in KINDS:
        for e in lists[kind]:
            e.pop("_derived", None)

    # 4. timestamps
    old_by_id = {(k, e.get("id")): e for k in KINDS for e in entities(previous, k)}
    for kind in KINDS:
        for e in lists[kind]:
            old = old_by_id.get((kind, e["id"]))
            created = old.get("created_at") if old else None
            e["created_at"] = created if isinstance(created, int) else _int(e.get("created_at"), stamp)
            if old is not None and _content(old) == _content(e) and isinstance(old.get("updated_at"), int):
                e["updated_at"] = old["updated_at"]
            else:
                e["updated_at"] = stamp
        if lists[kind]:
            out[kind] = lists[kind]
    return out


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


def _content(e: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in e.items() if k not in TIMESTAMPS}


def _assign_id(kind: str, e: dict[str, Any], previous: dict[str, Any]) -> None:
    if isinstance(e.get("id"), str) and e["id"]:
        return
    key = natural_key(kind, e)
    if key is not None:
        for old in entities(previous, kind):
            if natural_key(kind, old) == key and isinstance(old.get("id"), str):
                e["id"] = old["id"]
                return
        e["id"] = derived_id(kind, key)
    else:
        e["id"] = derived_id(kind, "content:" + canonical_json(_content(e)))
    if kind in ("targets", "acls", "plugins"):
        e["_derived"] = True  # its key may hold a reference by name: derived again once references are ids


# --------------------------------------------------------------------------------------------------------------
# normalize (through the config model)
# --------------------------------------------------------------------------------------------------------------


def normalize(flat: dict[str, Any], config: m.DeclarativeConfig) -> dict[str, Any]:
    """``flat`` with each entity replaced by the model's reading of it (``config`` is ``flat`` loaded), keeping the
    ids and timestamps; nested lists (always empty here) are left out."""
    out: dict[str, Any] = {"_format_version": FORMAT_VERSION}
    for kind, k in KINDS.items():
        items = entities(flat, kind)
        models = getattr(config, kind)
        if not items:
            continue
        assert len(models) == len(items), kind
        normalized = []
        for raw, model in zip(items, models):
            e = entity_dump(kind, model)
            for f in TIMESTAMPS:
                if f in raw:
                    e[f] = raw[f]
            normalized.append(e)
        out[kind] = normalized
    return out


def entity_dump(kind: str, model: BaseModel) -> dict[str, Any]:
    e = model.model_dump(mode="json", by_alias=True)
    for f in KINDS[kind].nested:
        e.pop(f, None)
    return e


# --------------------------------------------------------------------------------------------------------------
# nest (for dumps) and strip defaults
# --------------------------------------------------------------------------------------------------------------


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fi in model.model_fields.items():
        if fi.is_required():
            continue
        value = fi.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", by_alias=True)
        out[fi.alias or name] = value
    return out


_DEFAULTS = {k: _defaults(kind.model) for k, kind in KINDS.items()}


def strip_defaults(kind: str, e: dict[str, Any]) -> dict[str, Any]:
    d = _DEFAULTS[kind]
    return {k: v for k, v in e.items() if v is not None and not (k in d and d[k] == v)}


def nest(flat: dict[str, Any], *, keep_timestamps: bool = False, defaults: bool = False) -> dict[str, Any]:
    """A flat document as people write one: routes under their service, targets under their upstream, SNIs under
    their certificate, credentials under their consumer, a plugin under its one scope entity. Ids are kept (so a
    dump synced back changes nothing); defaults and timestamps are left out unless asked for."""

    def clean(kind: str, e: dict[str, Any]) -> dict[str, Any]:
        e = dict(e)
        if not keep_timestamps:
            for f in TIMESTAMPS:
                e.pop(f, None)
        return e if defaults else strip_defaults(kind, e)

    out: dict[str, Any] = {"_format_version": FORMAT_VERSION}
    plugins = [dict(p) for p in entities(flat, "plugins")]

    def scoped_plugins(field_name: str, owner: str) -> list[dict[str, Any]]:
        mine = []
        for p in plugins:
            refs = {f: p.get(f) for f in ("service", "route", "consumer")}
            if refs[field_name] == owner and all(v is None for f, v in refs.items() if f != field_name):
                mine.append(p)
        for p in mine:
            plugins.remove(p)
        return [clean("plugins", {k: v for k, v in p.items() if k != field_name}) for p in mine]

    routes_by_service: dict[str, list[dict]] = {}
    for r in entities(flat, "routes"):
        routes_by_service.setdefault(r.get("service"), []).append(r)
    services = []
    for s in entities(flat, "services"):
        svc = clean("services", s)
        routes = []
        for r in routes_by_service.pop(s["id"], []):
            route = clean("routes", {k: v for k, v in r.items() if k != "service"})
            rp = scoped_plugins("route", r["id"])
            if rp:
                route["plugins"] = rp
            routes.append(route)
        if routes:
            svc["routes"] = routes
        sp = scoped_plugins("service", s["id"])
        if sp:
            svc["plugins"] = sp
        services.append(svc)
    if services:
        out["services"] = services
    leftover = [clean("routes", r) for rs in routes_by_service.values() for r in rs]
    if leftover:
        out["routes"] = leftover

    def children(kind: str, ref: str, owner: str) -> list[dict[str, Any]]:
        return [clean(kind, {k: v for k, v in e.items() if k != ref}) for e in entities(flat, kind)
                if e.get(ref) == owner]

    ups = []
    for u in entities(flat, "upstreams"):
        up = clean("upstreams", u)
        ts = children("targets", "upstream", u["id"])
        if ts:
            up["targets"] = ts
        ups.append(up)
    if ups:
        out["upstreams"] = ups
    certs = []
    for c in entities(flat, "certificates"):
        cert = clean("certificates", c)
        snis = children("snis", "certificate", c["id"])
        if snis:
            cert["snis"] = snis
        certs.append(cert)
    if certs:
        out["certificates"] = certs
    for kind in ("ca_certificates", "consumer_groups"):
        items = [clean(kind, e) for e in entities(flat, kind)]
        if items:
            out[kind] = items
    consumers = []
    for c in entities(flat, "consumers"):
        con = clean("consumers", c)
        for kind in _CREDENTIAL_LISTS:
            creds = children(kind, "consumer", c["id"])
            if creds:
                con[kind] = creds
        cp = scoped_plugins("consumer", c["id"])
        if cp:
            con["plugins"] = cp
        consumers.append(con)
    if consumers:
        out["consumers"] = consumers
    if plugins:
        out["plugins"] = [clean("plugins", p) for p in plugins]
    # top-level targets, snis or credentials whose parent is gone cannot exist in a valid document
    return out


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


# --------------------------------------------------------------------------------------------------------------
# changes and diffs
# --------------------------------------------------------------------------------------------------------------


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """Entity by entity: ``{"op": "create"|"update"|"delete", "kind", "id", "name", "fields"}`` (``fields``: the
    fields an update changed)."""
    old = old or {}
    out: list[dict[str, Any]] = []
    for kind in KINDS:
        before = {e.get("id"): e for e in entities(old, kind)}
        after = {e.get("id"): e for e in entities(new, kind)}
        for eid, e in after.items():
            if eid not in before:
                out.append({"op": "create", "kind": kind, "id": eid, "name": label(kind, e)})
            else:
                a, b = _content(before[eid]), _content(e)
                if a != b:
                    fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    out.append({"op": "update", "kind": kind, "id": eid, "name": label(kind, e), "fields": fields})
        for eid, e in before.items():
            if eid not in after:
                out.append({"op": "delete", "kind": kind, "id": eid, "name": label(kind, e)})
    return out


def masked(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with secrets (private keys, passwords, API keys, JWT secrets) replaced by a short digest."""
    out = copy.deepcopy(flat)
    for kind, k in KINDS.items():
        for e in entities(out, kind):
            for f in k.secrets:
                v = e.get(f)
                if isinstance(v, str):
                    e[f] = f"<secret sha256:{hashlib.sha256(v.encode()).hexdigest()[:12]}>"
    return out


def text_diff(old: dict[str, Any] | None, new: dict[str, Any], old_name: str = "a", new_name: str = "b") -> str:
    """A unified diff of the two documents as nested YAML (timestamps left out, secrets masked)."""
    a = to_yaml(nest(masked(old or empty()))).splitlines(keepends=True)
    b = to_yaml(nest(masked(new))).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, old_name, new_name))
