"""response-transformer (Kong priority 800): change the response's headers and JSON body.

Kong's config: ``remove`` / ``rename`` / ``replace`` / ``add`` / ``append``, each with ``headers`` and ``json`` lists
(``"name"`` for remove, ``"old:new"`` for rename, ``"name:value"`` for the others) and, for replace / add / append,
``json_types`` (per entry: ``string``, ``number`` or ``boolean``; default string). Run in that order, with Kong's
meaning (replace only when present, add only when absent, append makes a list).

Our additions:
- a JSON name with dots is a path into nested objects (``user.email``), unless the object has that literal key;
  add / append / rename create the missing objects of a path, replace / remove need it to exist;
- ``json_keep``: fields (names or dotted paths) to keep, everything else is removed, applied last; through a list of
  objects a path applies to each element (``items.id`` keeps the ``id`` of every item). This is how a client gets
  only what it needs (just ``user.email``, not the whole profile).

Phases: ``header_filter`` for headers; ``response_body`` only when the config has JSON operations (else the phase is
``None`` on the instance and ``buffers_response`` is false), and ``wants_body`` only for JSON responses
(``application/json``, ``application/*+json``) that are not compressed (no ``Content-Encoding``). A body that is not
valid JSON, or not an object (a list, for ``json_keep``), passes unchanged. The proxy sets the new Content-Length.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import orjson
from pydantic import Field, field_validator, model_validator

from ._traffic import Record, apply_header_ops, pairs, parsed
from .base import BuildEnv, Ctx, Plugin, Response

_MISSING = object()
_CACHE_SIZE = 256


def is_json_type(content_type: str | None) -> bool:
    """application/json or application/<anything>+json, in any of a comma-separated list of media types."""
    if not content_type:
        return False
    for part in content_type.lower().split(","):
        media = part.split(";", 1)[0].strip()
        t, sep, sub = media.partition("/")
        if sep and t == "application" and (sub == "json" or sub.endswith("+json")):
            return True
    return False


def _path(name: str) -> tuple[str, ...]:
    return tuple(name.split(".")) if "." in name else (name,)


def _check_path(name: str) -> None:
    if "." in name and any(p == "" for p in name.split(".")):
        raise ValueError(f"'{name}' is not a valid JSON path (empty segment)")


def _cast(value: str, json_type: str, entry: str) -> Any:
    if json_type == "number":
        try:
            return int(value)
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise ValueError(f"'{entry}': '{value}' is not a number (json_types)") from None
            if f != f or f in (float("inf"), float("-inf")):
                raise ValueError(f"'{entry}': '{value}' is not a number (json_types)")
            return f
    if json_type == "boolean":
        return value == "true"
    return value


def _names(v: tuple[str, ...], what: str) -> tuple[str, ...]:
    pairs(v, what=what, need_value=False)
    for n, _ in parsed(v):
        _check_path(n)
    return v


# Kong's field is named "json", which shadows pydantic's deprecated BaseModel.json(): harmless, the warning is
# silenced for these three classes only.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class _Remove(Record):
        json: tuple[str, ...] = ()
        headers: tuple[str, ...] = ()

        @field_validator("json")
        @classmethod
        def _j(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            return _names(v, "remove.json")

        @field_validator("headers")
        @classmethod
        def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            return pairs(v, what="remove.headers", need_value=False, header_names=True)


    class _Rename(Record):
        json: tuple[str, ...] = ()
        headers: tuple[str, ...] = ()

        @field_validator("json")
        @classmethod
        def _j(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            pairs(v, what="rename.json")
            for old, new in parsed(v):
                _check_path(old)
                _check_path(new)
                if new.startswith(old + "."):
                    raise ValueError(f"cannot rename '{old}' into itself ('{new}')")
            return v

        @field_validator("headers")
        @classmethod
        def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            return pairs(v, what="rename.headers", header_names=True)


    class _Ops(Record):
        json: tuple[str, ...] = ()
        json_types: tuple[Literal["boolean", "number", "string"], ...] = ()
        headers: tuple[str, ...] = ()

        @field_validator("json")
        @classmethod
        def _j(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            pairs(v, what="json")
            for n, _ in parsed(v):
                _check_path(n)
            return v

        @field_validator("headers")
        @classmethod
        def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            return pairs(v, what="headers", header_names=True, header_values=True)

        @model_validator(mode="after")
        def _types(self) -> Any:
            self.typed()  # a json_types value that does not fit its entry is a load error
            return self

        def typed(self) -> tuple[tuple[str, Any], ...]:
            out = []
            for i, entry in enumerate(self.json):
                name, value = parsed((entry,))[0]
                t = self.json_types[i] if i < len(self.json_types) else "string"
                out.append((name, _cast(value, t, entry)))
            return tuple(out)


def _keep_tree(paths: tuple[str, ...]) -> dict[str, Any]:
    """{"user": {"email": None}, "id": None}: None keeps the whole value."""
    tree: dict[str, Any] = {}
    for p in paths:
        node = tree
        parts = p.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last:
                node[part] = None
            else:
                nxt = node.get(part, _MISSING)
                if nxt is None:
                    break  # an ancestor is kept whole
                if nxt is _MISSING:
                    nxt = node[part] = {}
                node = nxt
    return tree


def _keep(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            sub = tree.get(k, _MISSING)
            if sub is _MISSING:
                continue
            if sub is None:
                out[k] = v
            else:
                kept = _keep(v, sub)
                if kept is not _MISSING:
                    out[k] = kept
        return out
    if isinstance(value, list):
        return [_keep(v, tree) for v in value if isinstance(v, (dict, list))]
    return _MISSING  # a scalar where the path wants an object


def _parent(doc: dict[str, Any], path: tuple[str, ...], create: bool) -> dict[str, Any] | None:
    node: Any = doc
    for part in path[:-1]:
        nxt = node.get(part, _MISSING)
        if nxt is _MISSING or nxt is None:
            if not create:
                return None
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            return None
        node = nxt
    return node


class ResponseTransformer(Plugin):
    name = "response-transformer"
    priority = 800

    class Config(Record):
        remove: _Remove = _Remove()
        rename: _Rename = _Rename()
        replace: _Ops = _Ops()
        add: _Ops = _Ops()
        append: _Ops = _Ops()
        json_keep: tuple[str, ...] = Field((), description="fields (or dotted paths) to keep; the rest is removed")

        @field_validator("json_keep")
        @classmethod
        def _keep(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            for p in v:
                if not p or any(s == "" for s in p.split(".")):
                    raise ValueError(f"'{p}' is not a valid JSON path (empty segment)")
            return v

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        c = config
        self.h_remove = tuple(n for n, _ in parsed(c.remove.headers))
        self.h_rename = parsed(c.rename.headers)
        self.h_replace = parsed(c.replace.headers)
        self.h_add = parsed(c.add.headers)
        self.h_append = parsed(c.append.headers)
        self.has_headers = bool(self.h_remove or self.h_rename or self.h_replace or self.h_add or self.h_append)
        self.j_remove = tuple((n, _path(n)) for n, _ in parsed(c.remove.json))
        self.j_rename = tuple((o, _path(o), _path(n)) for o, n in parsed(c.rename.json))
        self.j_replace = tuple((n, _path(n), v) for n, v in c.replace.typed())
        self.j_add = tuple((n, _path(n), v) for n, v in c.add.typed())
        self.j_append = tuple((n, _path(n), v) for n, v in c.append.typed())
        self.keep = _keep_tree(c.json_keep) if c.json_keep else None
        self.has_json = bool(self.j_remove or self.j_rename or self.j_replace or self.j_add or self.j_append
                             or self.keep is not None)
        self.json_ct: dict[str, bool] = {}  # Content-Type value -> is JSON
        if self.has_json:
            self.buffers_response = True  # type: ignore[misc]  # read per instance by the proxy
        else:
            self.response_body = None  # type: ignore[assignment]  # no phase: the chain skips it
        if not self.has_headers:
            self.header_filter = None  # type: ignore[assignment]

    # -- headers ------------------------------------------------------------------------------------------------
    def header_filter(self, ctx: Ctx, resp: Response) -> None:
        apply_header_ops(resp.headers, self.h_remove, self.h_rename, self.h_replace, self.h_add, self.h_append)

    # -- body ---------------------------------------------------------------------------------------------------
    def wants_body(self, ctx: Ctx, resp: Response) -> bool:
        h = resp.headers
        ce = h.get("Content-Encoding")
        if ce is not None and ce.strip().lower() not in ("", "identity"):
            return False
        ct = h.get("Content-Type")
        if ct is None:
            return False
        v = self.json_ct.get(ct)
        if v is None:
            v = is_json_type(ct)
            if len(self.json_ct) >= _CACHE_SIZE:
                self.json_ct.clear()
            self.json_ct[ct] = v
        return v

    def response_body(self, ctx: Ctx, resp: Response, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        if isinstance(doc, dict):
            changed = self._ops(doc)
        elif isinstance(doc, list) and self.keep is not None:
            changed = False
        else:
            return body
        if self.keep is not None:
            doc = _keep(doc, self.keep)
            changed = True
        if not changed:
            return body
        try:
            return orjson.dumps(doc)
        except orjson.JSONEncodeError:  # pragma: no cover - defensive: what was loaded can be dumped
            return body

    def _ops(self, doc: dict[str, Any]) -> bool:
        changed = False
        for name, path in self.j_remove:
            if name in doc:
                del doc[name]
                changed = True
            elif len(path) > 1:
                parent = _parent(doc, path, False)
                if parent is not None and path[-1] in parent:
                    del parent[path[-1]]
                    changed = True
        for name, path, new in self.j_rename:
            if name in doc:
                src, key = doc, name
            elif len(path) > 1:
                src, key = _parent(doc, path, False), path[-1]  # type: ignore[assignment]
                if src is None or key not in src:
                    continue
            else:
                continue
            target = _parent(doc, new, True)
            if target is None:
                continue  # the new path runs through a value that is not an object
            target[new[-1]] = src.pop(key)
            changed = True
        for name, path, value in self.j_replace:
            if name in doc:
                doc[name] = value
                changed = True
            elif len(path) > 1:
                parent = _parent(doc, path, False)
                if parent is not None and path[-1] in parent:
                    parent[path[-1]] = value
                    changed = True
        for name, path, value in self.j_add:
            if name in doc:
                continue
            parent = _parent(doc, path, True)
            if parent is not None and path[-1] not in parent:
                parent[path[-1]] = value
                changed = True
        for name, path, value in self.j_append:
            if name in doc:
                parent, key = doc, name
            else:
                parent, key = _parent(doc, path, True), path[-1]  # type: ignore[assignment]
                if parent is None:
                    continue
            cur = parent.get(key, _MISSING)
            if cur is _MISSING:
                parent[key] = [value]
            elif isinstance(cur, list):
                cur.append(value)
            else:
                parent[key] = [cur, value]
            changed = True
        return changed
