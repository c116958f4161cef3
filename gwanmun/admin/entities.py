"""Kong's Admin API semantics on a flat document: find, list, page, create, upsert (PUT), update (PATCH), delete.

Pure functions on a flat document (``gwanmun.store.doc``); the API (``gwanmun.admin.api``) maps HTTP onto them and the
control plane validates the whole resulting document before anything is stored. Errors are ``ApiError(status,
body)`` with Kong's bodies: ``{"message": ..., "name": ..., "code": ..., "fields": {...}}``.

Kong's rules kept here: ids are UUIDs made by the server unless given; an entity is named in a URL by its id or its
endpoint key (a service's name, a consumer's username or custom_id, a key-auth key, ...); ``PUT`` creates or replaces
(keeping the id and ``created_at``); ``PATCH`` merges (a plugin's ``config`` one level deep); ``DELETE`` of something
absent is still 204; deleting cascades to plugins, targets, SNIs and credentials, and is refused for a service that
routes still use; a unique field already taken is 409. Nested collections (``/services/{s}/routes``) scope both reads
and writes to their parent.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import ConfigIssue, format_path
from ..store import doc as docs
from ..store.doc import KINDS, Kind

MAX_PAGE = 1000
DEFAULT_PAGE = 100

# Kong's error codes (kong/db/errors.lua)
SCHEMA_VIOLATION = 2
FOREIGN_KEY_VIOLATION = 4
UNIQUE_VIOLATION = 5
INVALID_OFFSET = 7
INVALID_SIZE = 9
OPERATION_UNSUPPORTED = 12
DECLARATIVE_CONFIG = 14


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str) -> None:
        self.status = status
        self.body = {"message": body} if isinstance(body, str) else body
        super().__init__(f"{status} {self.body.get('message')}")


def not_found() -> ApiError:
    return ApiError(404, {"message": "Not found"})


def schema_violation(fields: dict[str, str], name: str = "schema violation", code: int = SCHEMA_VIOLATION) -> ApiError:
    parts = [f"{k}: {v}" for k, v in fields.items()]
    message = f"{name} ({parts[0]})" if len(parts) == 1 else f"{len(parts)} {name}s ({'; '.join(parts)})"
    return ApiError(400, {"code": code, "name": name, "message": message, "fields": fields})


def issues_error(issues: list[ConfigIssue], entity: tuple[str, int] | None = None, *,
                 declarative: bool = False) -> ApiError:
    """A rejected config as a 400: each issue under its field path, relative to ``entity`` (kind, index) when it is
    inside the entity being written, else the path in the whole document."""
    fields: dict[str, str] = {}
    errors = []
    for i in issues:
        path = i.path
        if entity is not None and path[:2] == entity:
            key = format_path(path[2:]) if len(path) > 2 else "@entity"
        else:
            key = format_path(path)
        fields[key] = f"{fields[key]}; {i.message}" if key in fields else i.message
        errors.append({"path": format_path(path), "message": i.message, **({"line": i.line} if i.line else {})})
    if declarative:
        parts = [f"{k}: {v}" for k, v in fields.items()]
        err = ApiError(400, {"code": DECLARATIVE_CONFIG, "name": "invalid declarative configuration",
                             "message": "declarative config is invalid: " + "; ".join(parts), "fields": fields})
    else:
        err = schema_violation(fields)
    err.body["errors"] = errors
    return err


def is_uuid(v: Any) -> bool:
    if not isinstance(v, str) or len(v) != 36:
        return False
    try:
        uuid.UUID(v)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """A nested collection's parent: ``/services/{s}/routes`` is Scope("service", <the service's id>)."""

    field: str
    id: str

    def matches(self, e: dict[str, Any]) -> bool:
        return e.get(self.field) == self.id


def lookup(doc: dict[str, Any], kind: str, key: str, scope: Scope | None = None) -> tuple[int, dict[str, Any]] | None:
    """(index, entity) for an id or endpoint key, within ``scope``."""
    items = docs.entities(doc, kind)
    for i, e in enumerate(items):
        if e.get("id") == key and (scope is None or scope.matches(e)):
            return i, e
    if is_uuid(key):
        return None
    for name in KINDS[kind].endpoint_keys:
        for i, e in enumerate(items):
            value = e.get(name)
            if kind == "snis" and isinstance(value, str):
                match = value == key.lower()
            else:
                match = value == key
            if match and (scope is None or scope.matches(e)):
                return i, e
    return None


def output(kind: str, e: dict[str, Any], doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entity as Kong's Admin API shows it: references as ``{"id": ...}``."""
    out = dict(e)
    for f in KINDS[kind].refs:
        v = out.get(f)
        out[f] = {"id": v} if isinstance(v, str) else None
    if kind == "certificates" and doc is not None:
        out["snis"] = [s.get("name") for s in docs.entities(doc, "snis") if s.get("certificate") == e.get("id")]
    return out


def _tag_filter(tags: str | None):
    if tags is None:
        return None
    if "," in tags and "/" in tags:
        raise ApiError(400, {"code": 11, "name": "invalid options",
                             "message": "invalid option (tags: invalid filter syntax: mix of ',' and '/')"})
    if "/" in tags:
        wanted = [t for t in tags.split("/") if t]
        return lambda e: any(t in (e.get("tags") or []) for t in wanted)
    wanted = [t for t in tags.split(",") if t]
    return lambda e: all(t in (e.get("tags") or []) for t in wanted)


def page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, {"code": INVALID_SIZE, "name": "invalid size", "message": "size must be a number"}) from None
    if not 1 <= size <= MAX_PAGE:
        raise ApiError(400, {"code": INVALID_SIZE, "name": "invalid size",
                             "message": f"size must be an integer between 1 and {MAX_PAGE}"})
    return size


def encode_offset(index: int, eid: str) -> str:
    raw = json.dumps([index, eid], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_offset(offset: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(offset + "=" * (-len(offset) % 4))
        index, eid = json.loads(raw)
        if not isinstance(index, int) or index < 0 or not isinstance(eid, str):
            raise ValueError
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(400, {"code": INVALID_OFFSET, "name": "invalid offset",
                             "message": f"'{offset}' is not a valid offset: bad base64 encoding"}) from None
    return index, eid


def page(items: list[dict[str, Any]], path: str, args: dict[str, str]) -> dict[str, Any]:
    """Kong's paginated list: ``{"data": [...], "next": "/path?offset=...", "offset": "..."}`` (``next`` null and no
    ``offset`` on the last page). The offset names the last entity returned, so entities created or deleted
    meanwhile do not shift the next page."""
    size = page_size(args.get("size"))
    keep = _tag_filter(args.get("tags"))
    if keep is not None:
        items = [e for e in items if keep(e)]
    start = 0
    if args.get("offset"):
        index, eid = decode_offset(args["offset"])
        ids = [e.get("id") for e in items]
        if index < len(ids) and ids[index] == eid:
            start = index + 1
        elif eid in ids:
            start = ids.index(eid) + 1
        else:
            start = min(index, len(items))
    chunk = items[start : start + size]
    body: dict[str, Any] = {"data": chunk, "next": None}
    if start + size < len(items) and chunk:
        offset = encode_offset(start + len(chunk) - 1, str(chunk[-1].get("id")))
        extra = "".join(f"&{k}={quote(args[k], safe='')}" for k in ("size", "tags") if args.get(k))
        body["next"] = f"{path}?offset={offset}{extra}"
        body["offset"] = offset
    return body


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------

_URL_PARTS = ("protocol", "host", "port", "path")
_HASH_PREFIXES = ("$2a$", "$2b$", "$2y$", "$argon2id$", "$argon2i$", "$argon2d$")


def _resolve_refs(doc: dict[str, Any], kind: Kind, e: dict[str, Any], scope: Scope | None) -> None:
    for f, target in kind.refs.items():
        if scope is not None and scope.field == f:
            e[f] = scope.id
            continue
        if e.get(f) is None:
            continue
        v = docs.ref_value(e[f])
        if v is None:
            raise schema_violation({f: f"expected a {docs.SINGULAR[target]} reference: "
                                       f"{{\"id\": \"...\"}}, {{\"name\": \"...\"}} or a string"})
        found = lookup(doc, target, v)
        if found is None:
            raise ApiError(400, {
                "code": FOREIGN_KEY_VIOLATION, "name": "foreign key violation",
                "message": f"the foreign key '{json.dumps(e[f]) if isinstance(e[f], dict) else v}' does not "
                           f"reference an existing '{target}' entity.",
                "fields": {f: e[f]}})
        e[f] = found[1]["id"]


def _generate(kind: str, e: dict[str, Any], hash_password) -> None:
    """Kong fills these in when they are absent; passwords are stored hashed."""
    if kind == "keyauth_credentials" and e.get("key") is None and e.get("key_hash") is None:
        e["key"] = secrets.token_hex(16)
    elif kind == "jwt_secrets":
        if e.get("key") is None:
            e["key"] = secrets.token_hex(16)
        alg = e.get("algorithm", "HS256")
        if isinstance(alg, str) and alg.startswith("HS") and e.get("secret") is None:
            e["secret"] = secrets.token_hex(16)
    elif kind == "basicauth_credentials":
        pw = e.get("password")
        if isinstance(pw, str) and pw and not pw.startswith(_HASH_PREFIXES):
            e["password"] = hash_password(pw)


def _check_unique(doc: dict[str, Any], kind: Kind, e: dict[str, Any]) -> None:
    for fields in kind.unique:
        values = tuple(e.get(f) for f in fields)
        if all(v is None for v in values) or (len(fields) == 1 and values[0] is None):
            continue
        norm = tuple(v.lower() if kind.key == "snis" and isinstance(v, str) else v for v in values)
        for other in docs.entities(doc, kind.key):
            if other.get("id") == e.get("id"):
                continue
            theirs = tuple(other.get(f) for f in fields)
            theirs = tuple(v.lower() if kind.key == "snis" and isinstance(v, str) else v for v in theirs)
            if theirs == norm:
                shown = ", ".join(f'{f}={json.dumps(v)}' for f, v in zip(fields, values) if v is not None)
                raise ApiError(409, {"code": UNIQUE_VIOLATION, "name": "unique constraint violation",
                                     "message": f"UNIQUE violation detected on '{{{shown}}}'",
                                     "fields": {f: v for f, v in zip(fields, values) if v is not None}})


def check_entity(kind: str, e: dict[str, Any]) -> None:
    """The entity alone against its model (types, ranges, formats), before it meets the rest of the document: the
    same messages as the loader's, with paths relative to the entity. Raises ``ApiError`` 400."""
    from pydantic import ValidationError

    from ..config.load import _convert  # noqa: PLC2701 - the loader's own wording for pydantic errors
    from ..config.model import DeclarativeConfig

    data = {"_format_version": docs.FORMAT_VERSION, kind: [e]}
    try:
        DeclarativeConfig.model_validate(data)
    except ValidationError as exc:
        raise issues_error(_convert(exc, "<request>", {}), (kind, 0)) from None


class Writer:
    """Mutations of one flat document (already a private copy). Each returns the id of the entity it wrote."""

    def __init__(self, doc: dict[str, Any], hash_password=None) -> None:
        self.doc = doc
        self.hash_password = hash_password or _default_hash

    def _items(self, kind: str) -> list[dict[str, Any]]:
        return self.doc.setdefault(kind, [])

    def _prepare(self, kind: Kind, body: Any, scope: Scope | None, existing: dict[str, Any] | None,
                 merge: bool) -> tuple[dict[str, Any], list[str] | None]:
        if not isinstance(body, dict):
            raise ApiError(400, {"code": SCHEMA_VIOLATION, "name": "schema violation",
                                 "message": "the request body must be a JSON object"})
        body = copy.deepcopy(body)
        for f in docs.TIMESTAMPS:
            body.pop(f, None)
        snis: list[str] | None = None
        for f in kind.nested:
            if f not in body:
                continue
            value = body.pop(f)
            if kind.key == "certificates" and f == "snis":
                if value is None:
                    snis = []
                elif isinstance(value, list) and all(isinstance(s, str) for s in value):
                    snis = value
                else:
                    raise schema_violation({"snis": "expected a list of SNI names"})
            elif value not in (None, []):
                raise schema_violation({f: f"nested {f} are not accepted here: create them through their own "
                                           f"endpoint (e.g. POST /{kind.api}/{{{kind.singular}}}/{f.replace('_', '-')})"})
        if "id" in body and body["id"] is not None and not is_uuid(body["id"]):
            raise schema_violation({"id": "expected a valid UUID"})
        if existing is not None:
            if body.get("id") not in (None, existing["id"]):
                raise schema_violation({"id": "cannot change an entity's id"})
            if merge:
                base = {k: v for k, v in existing.items() if k not in docs.TIMESTAMPS}
                if kind.key == "services" and "url" in body:
                    for f in _URL_PARTS:
                        base.pop(f, None)
                if kind.key == "plugins" and isinstance(body.get("config"), dict) and isinstance(base.get("config"),
                                                                                                  dict):
                    body["config"] = {**base["config"], **body["config"]}
                body = {**base, **body}
            body["id"] = existing["id"]
            body["created_at"] = existing.get("created_at", docs.now())
        else:
            body["id"] = body.get("id") or str(uuid.uuid4())
            body["created_at"] = docs.now()
            if lookup(self.doc, kind.key, body["id"]) is not None:
                raise ApiError(409, {"code": UNIQUE_VIOLATION, "name": "unique constraint violation",
                                     "message": f"UNIQUE violation detected on '{{id=\"{body['id']}\"}}'",
                                     "fields": {"id": body["id"]}})
        body["updated_at"] = docs.now()
        if kind.key == "services" and "url" in body:
            for f in _URL_PARTS:
                if body.get(f) is None:
                    body.pop(f, None)
        _resolve_refs(self.doc, kind, body, scope)
        _generate(kind.key, body, self.hash_password)
        check_entity(kind.key, body)
        _check_unique(self.doc, kind, body)
        return body, snis

    def _store(self, kind: Kind, e: dict[str, Any], index: int | None, snis: list[str] | None) -> str:
        items = self._items(kind.key)
        if index is None:
            items.append(e)
        else:
            items[index] = e
        if snis is not None:
            self._set_snis(e["id"], snis)
        return e["id"]

    def _set_snis(self, cert_id: str, names: list[str]) -> None:
        keep = {s.get("name"): s for s in docs.entities(self.doc, "snis") if s.get("certificate") == cert_id}
        others = [s for s in docs.entities(self.doc, "snis") if s.get("certificate") != cert_id]
        new = []
        for name in dict.fromkeys(n.lower() for n in names):
            old = keep.get(name)
            e = old or {"id": str(uuid.uuid4()), "name": name, "tags": [], "certificate": cert_id,
                        "created_at": docs.now(), "updated_at": docs.now()}
            _check_unique({"snis": others + new}, KINDS["snis"], e)
            new.append(e)
        self.doc["snis"] = others + new

    def create(self, kind_key: str, body: Any, scope: Scope | None = None) -> str:
        kind = KINDS[kind_key]
        e, snis = self._prepare(kind, body, scope, None, merge=False)
        return self._store(kind, e, None, snis)

    def upsert(self, kind_key: str, key: str, body: Any, scope: Scope | None = None) -> tuple[str, bool]:
        """PUT: (id, created). The URL's key is the id (a UUID) or the endpoint key."""
        kind = KINDS[kind_key]
        found = lookup(self.doc, kind_key, key, scope)
        if isinstance(body, dict):
            body = dict(body)
            if is_uuid(key):
                body["id"] = key
            elif kind.endpoint_keys:
                body[kind.endpoint_keys[0]] = key
            else:
                raise ApiError(400, {"code": 1, "name": "invalid primary key",
                                     "message": f"invalid primary key: '{{id=\"{key}\"}}': expected a valid UUID"})
        if found is None:
            if scope is not None and lookup(self.doc, kind_key, key) is not None:
                raise not_found()  # it exists, under another parent
            e, snis = self._prepare(kind, body, scope, None, merge=False)
            return self._store(kind, e, None, snis), True
        index, existing = found
        e, snis = self._prepare(kind, body, scope, existing, merge=False)
        return self._store(kind, e, index, snis), False

    def update(self, kind_key: str, key: str, body: Any, scope: Scope | None = None) -> str:
        """PATCH."""
        kind = KINDS[kind_key]
        found = lookup(self.doc, kind_key, key, scope)
        if found is None:
            raise not_found()
        index, existing = found
        e, snis = self._prepare(kind, body, scope, existing, merge=True)
        return self._store(kind, e, index, snis)

    def delete(self, kind_key: str, key: str, scope: Scope | None = None) -> bool:
        found = lookup(self.doc, kind_key, key, scope)
        if found is None:
            return False
        _, e = found
        self._delete(kind_key, e["id"])
        return True

    def _delete(self, kind_key: str, eid: str) -> None:
        for (child, field), rule in docs.CASCADE.items():
            if KINDS[child].refs.get(field) != kind_key:
                continue
            users = [x for x in docs.entities(self.doc, child) if x.get(field) == eid]
            if users and rule == "restrict":
                raise ApiError(400, {"code": FOREIGN_KEY_VIOLATION, "name": "foreign key violation",
                                     "message": f"an existing '{child}' entity references this '{kind_key}' entity",
                                     "fields": {"@referenced_by": child}})
        for (child, field), rule in docs.CASCADE.items():
            if KINDS[child].refs.get(field) != kind_key or rule != "cascade":
                continue
            for x in [x for x in docs.entities(self.doc, child) if x.get(field) == eid]:
                self._delete(child, x["id"])
        items = self._items(kind_key)
        items[:] = [x for x in items if x.get("id") != eid]
        if not items:
            del self.doc[kind_key]


def _default_hash(password: str) -> str:
    from ..auth.secrets import hash_password

    return hash_password(password)


def index_of(doc: dict[str, Any], kind: str, eid: str) -> int | None:
    for i, e in enumerate(docs.entities(doc, kind)):
        if e.get("id") == eid:
            return i
    return None
