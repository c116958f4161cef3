"""request-transformer (Kong priority 801): change the request before it goes upstream.

Kong's config: ``remove`` / ``rename`` / ``replace`` / ``add`` / ``append``, each with ``headers``, ``querystring`` and
``body`` lists (``"name"`` for remove, ``"old:new"`` for rename, ``"name:value"`` for the others), plus
``replace.uri`` and ``http_method``. Operations run in that order; their meaning is Kong's:

- remove: drop the field; rename: move it to a new name when present; replace: change its value only when present;
  add: set it only when absent; append: add one more value (a repeated header or argument, a JSON list).

Phases (a config only gets the ones it needs; the others are ``None`` on the instance, so the chain skips them):

- ``access``: ``replace.uri`` -> ``ctx.upstream_path`` (the whole path sent upstream), ``http_method`` ->
  ``ctx.shared["method"]``, headers on ``ctx.headers`` (``replace`` of ``Host`` -> ``ctx.shared["upstream_host"]``;
  ``Host`` is otherwise left alone, as Kong), query arguments on ``ctx.query`` (re-encoded, untouched arguments kept
  byte for byte).
- ``request_body`` (only when the config has body operations, or ``http_method`` GET/HEAD/TRACE, which moves a form
  body's arguments into the query string as Kong does): ``buffers_request`` is then true *on the instance*;
  ``application/json`` (top-level fields of an object) and ``application/x-www-form-urlencoded`` bodies are
  changed, other content types are left alone (``wants_request_body(ctx)`` tells the proxy before it buffers).

Values are literal: Kong's ``$(...)`` templates are refused at load ("templates are not supported yet").
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field, field_validator

from ._traffic import ArgOps, Record, apply_header_ops, pairs, parsed
from .base import BuildEnv, Ctx, Plugin

METHOD_KEY = "method"  # ctx.shared key: the method to send upstream
HOST_KEY = "upstream_host"  # ctx.shared key: the Host to send upstream
NGINX_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE", "PROPFIND",
                 "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE")
_JSON, _FORM = 1, 2


def _kind(content_type: str | None) -> int:
    if not content_type:
        return 0
    ct = content_type.lower()
    if "application/json" in ct:
        return _JSON
    if "application/x-www-form-urlencoded" in ct:
        return _FORM
    return 0


def _names(entries: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n for n, _ in parsed(entries))


class _Remove(Record):
    body: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    querystring: tuple[str, ...] = ()

    @field_validator("headers")
    @classmethod
    def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="remove.headers", need_value=False, header_names=True)

    @field_validator("body", "querystring")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="remove", need_value=False)


class _Rename(Record):
    body: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    querystring: tuple[str, ...] = ()

    @field_validator("headers")
    @classmethod
    def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="rename.headers", header_names=True, templates=True)

    @field_validator("body", "querystring")
    @classmethod
    def _p(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="rename", templates=True)


class _Ops(Record):
    body: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    querystring: tuple[str, ...] = ()

    @field_validator("headers")
    @classmethod
    def _h(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="headers", header_names=True, header_values=True, templates=True)

    @field_validator("body", "querystring")
    @classmethod
    def _p(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return pairs(v, what="body", templates=True)


class _Replace(_Ops):
    uri: str | None = None

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "$(" in v:
            raise ValueError("templates are not supported yet")
        if not v.startswith("/"):
            raise ValueError("uri must start with '/'")
        if any(c in v for c in " \t\r\n\0?#"):
            raise ValueError("uri must be a path: no spaces, control characters, '?' or '#'")
        return v


class RequestTransformer(Plugin):
    name = "request-transformer"
    priority = 801

    class Config(Record):
        http_method: str | None = Field(None, description="method sent upstream")
        remove: _Remove = _Remove()
        rename: _Rename = _Rename()
        replace: _Replace = _Replace()
        add: _Ops = _Ops()
        append: _Ops = _Ops()

        @field_validator("http_method")
        @classmethod
        def _method(cls, v: str | None) -> str | None:
            if v is None:
                return v
            if not v.isalpha() or not v.isupper():
                raise ValueError(f"invalid value: '{v}' (an HTTP method in upper case, e.g. POST)")
            if v not in NGINX_METHODS:
                raise ValueError(f"{v} is not supported")
            return v

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        c = config
        self.uri = c.replace.uri
        self.method = c.http_method
        # headers: (lower name, name[, value]); Host is special (see the module doc)
        self.h_remove = tuple(n.lower() for n, _ in parsed(c.remove.headers) if n.lower() != "host")
        self.h_rename = tuple((o, n) for o, n in parsed(c.rename.headers) if o.lower() != "host")
        self.h_replace = tuple((n, v) for n, v in parsed(c.replace.headers) if n.lower() != "host")
        self.host = next((v for n, v in parsed(c.replace.headers) if n.lower() == "host"), None)
        self.h_add = tuple((n, v) for n, v in parsed(c.add.headers) if n.lower() != "host")
        self.h_append = tuple((n, v) for n, v in parsed(c.append.headers) if n.lower() != "host")
        self.has_headers = bool(self.h_remove or self.h_rename or self.h_replace or self.h_add or self.h_append
                                or self.host is not None)
        self.query = ArgOps(_names(c.remove.querystring), parsed(c.rename.querystring), parsed(c.replace.querystring),
                            parsed(c.add.querystring), parsed(c.append.querystring))
        self.form = ArgOps(_names(c.remove.body), parsed(c.rename.body), parsed(c.replace.body), parsed(c.add.body),
                           parsed(c.append.body))
        self.j_remove = _names(c.remove.body)
        self.j_rename = parsed(c.rename.body)
        self.j_replace = parsed(c.replace.body)
        self.j_add = parsed(c.add.body)
        self.j_append = parsed(c.append.body)
        self.has_body = not self.form.empty
        self.form_to_query = self.method in ("GET", "HEAD", "TRACE")
        if not (self.has_body or self.form_to_query):
            self.request_body = None  # type: ignore[assignment]  # no phase: the chain skips it
        else:
            self.buffers_request = True  # type: ignore[misc]  # read per instance by the proxy
        if not (self.uri is not None or self.method is not None or self.has_headers or not self.query.empty):
            self.access = None  # type: ignore[assignment]

    # -- access -------------------------------------------------------------------------------------------------
    def access(self, ctx: Ctx) -> None:
        if self.uri is not None:
            ctx.upstream_path = self.uri
        if self.method is not None:
            ctx.shared[METHOD_KEY] = self.method
        if self.has_headers:
            self._headers(ctx)
        if not self.query.empty:
            q = ctx.query
            raw = q.decode("latin-1")
            new = self.query.apply(raw[1:] if raw.startswith("?") else raw)
            if new is not None:
                ctx.query = ("?" + new).encode("latin-1") if new else b""

    def _headers(self, ctx: Ctx) -> None:
        if self.host is not None:
            ctx.shared[HOST_KEY] = self.host
        apply_header_ops(ctx.headers, self.h_remove, self.h_rename, self.h_replace, self.h_add, self.h_append)

    # -- body ---------------------------------------------------------------------------------------------------
    def wants_request_body(self, ctx: Ctx) -> bool:
        """Whether this request's body is one the plugin may change (JSON or form), so worth buffering."""
        kind = _kind(ctx.headers.get("Content-Type"))
        return (kind != 0 and self.has_body) or (kind == _FORM and self.form_to_query)

    def request_body(self, ctx: Ctx, body: bytes) -> bytes | None:
        kind = _kind(ctx.headers.get("Content-Type"))
        if kind == 0:
            return None
        new: bytes | None = None
        if self.has_body:
            new = self._json(body) if kind == _JSON else self._form(body)
        if kind == _FORM and self.form_to_query:
            self._form_to_query(ctx, body if new is None else new)
        return new

    def _form(self, body: bytes) -> bytes | None:
        out = self.form.apply(body.decode("latin-1"))
        return None if out is None else out.encode("latin-1")

    def _json(self, body: bytes) -> bytes | None:
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            if not isinstance(doc, dict):
                return None
            changed = False
            for name in self.j_remove:
                if name in doc:
                    del doc[name]
                    changed = True
            for old, new in self.j_rename:
                if old in doc and old != new:
                    doc[new] = doc.pop(old)
                    changed = True
            for name, value in self.j_replace:
                if name in doc:
                    doc[name] = value
                    changed = True
        else:
            doc = {}  # Kong: an empty body still gets the added and appended fields
            changed = False
        for name, value in self.j_add:
            if name not in doc:
                doc[name] = value
                changed = True
        for name, value in self.j_append:
            cur = doc.get(name)
            if name not in doc:
                doc[name] = [value]
            elif isinstance(cur, list):
                cur.append(value)
            else:
                doc[name] = [cur, value]
            changed = True
        return orjson.dumps(doc) if changed else None

    def _form_to_query(self, ctx: Ctx, body: bytes) -> None:
        """Kong: a GET/HEAD/TRACE made from a form request carries the form's arguments in the query string."""
        form = body.decode("latin-1").strip("&")
        if not form:
            return
        q = ctx.query.decode("latin-1")
        q = q[1:] if q.startswith("?") else q
        ctx.query = ("?" + (q + "&" + form if q else form)).encode("latin-1")
