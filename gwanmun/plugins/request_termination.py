"""request-termination (Kong priority 2): answer the request here, with a fixed response, instead of the upstream.

- ``body`` (+ ``content_type``): that body, as it is: a mock response.
- otherwise ``{"message": message}`` as JSON; without ``message``, Kong's default for the status ("Service
  unavailable" for 503, ...), or an empty body for a status without one.
- ``echo``: a JSON echo of the request (Kong's shape: ``message``, ``kong``, ``request`` with headers, query, body,
  raw body, method, path, and ``matched_route`` / ``matched_service``), for debugging.
- ``trigger``: a header or query argument name; the plugin acts only on requests that carry it, the others pass.

The fixed answers are built once. ``echo`` needs the request body: such a plugin sets ``buffers_request`` on the
instance and, for a request that has a body, answers from ``request_body``; a request without one is answered from
``access``.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from ._traffic import Record, check_header_name, has_arg, parse_args
from .base import BuildEnv, Ctx, Plugin, Reply
from .correlation_id import _HOST, process_uuid

DEFAULT_RESPONSE = {
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    500: "An unexpected error occurred",
    502: "Bad Gateway",
    503: "Service unavailable",
}
JSON = "application/json; charset=utf-8"
_ECHO = "request-termination.echo"  # ctx.shared: echo from request_body


def _present(v: str | None) -> bool:
    return isinstance(v, str) and len(v) > 0


def _has_body(ctx: Ctx) -> bool:
    h = ctx.headers
    cl = h.get("Content-Length")
    if cl is not None:
        return cl != "0"  # the proxy's own rule (it calls request_body only for a request with a body)
    return h.get("Transfer-Encoding") is not None


def _entity(obj: Any) -> Any:
    if obj is None:
        return None
    return {"id": getattr(obj, "id", None), "name": getattr(obj, "name", None)}


def _parse_body(ctx: Ctx, raw: bytes) -> Any:
    ct = (ctx.headers.get("Content-Type") or "").lower()
    try:
        if "application/json" in ct:
            return orjson.loads(raw) if raw else None
        if "application/x-www-form-urlencoded" in ct:
            return parse_args(raw.decode("latin-1"))
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    return None


class RequestTermination(Plugin):
    name = "request-termination"
    priority = 2

    class Config(Record):
        status_code: int = Field(503, description="the response status")
        message: str | None = Field(None, description='JSON {"message": ...} body')
        content_type: str | None = Field(None, description="Content-Type of body")
        body: str | None = Field(None, description="the raw response body")
        echo: bool = False
        trigger: str | None = Field(None, description="header or query argument that activates the plugin")

        @field_validator("status_code")
        @classmethod
        def _status(cls, v: int) -> int:
            if not 100 <= v <= 599:
                raise ValueError("value should be between 100 and 599")
            return v

        @field_validator("trigger")
        @classmethod
        def _trigger(cls, v: str | None) -> str | None:
            return None if v is None else check_header_name(v)

        @field_validator("content_type")
        @classmethod
        def _ct(cls, v: str | None) -> str | None:
            if v is not None and any(c in v for c in "\r\n\0"):
                raise ValueError("invalid content_type")
            return v

        @model_validator(mode="after")
        def _rules(self) -> Any:
            if _present(self.message) and (_present(self.content_type) or _present(self.body)):
                raise ValueError("message cannot be used with content_type or body")
            if _present(self.content_type) and not _present(self.body):
                raise ValueError("content_type requires a body")
            if self.echo and (_present(self.content_type) or _present(self.body)):
                raise ValueError("echo cannot be used with content_type and body")
            return self

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        c = config
        self.status = c.status_code
        self.trigger = c.trigger
        self.echo = c.echo
        self.message = c.message if c.message is not None else DEFAULT_RESPONSE.get(c.status_code)
        if c.body is not None:
            self.payload = c.body.encode("utf-8")
            self.headers = [("Content-Type", c.content_type)] if c.content_type else []
        elif self.message is not None:
            self.payload = orjson.dumps({"message": self.message})
            self.headers = [("Content-Type", JSON)]
        else:
            self.payload = b""
            self.headers = []
        if c.echo:
            self.buffers_request = True  # type: ignore[misc]  # read per instance by the proxy
        else:
            self.request_body = None  # type: ignore[assignment]  # no phase: the chain skips it

    def _triggered(self, ctx: Ctx) -> bool:
        t = self.trigger
        return t is None or t in ctx.headers or has_arg(ctx.query, t)

    def access(self, ctx: Ctx) -> Reply | None:
        if self.trigger is not None and not self._triggered(ctx):
            return None
        if self.echo:
            if _has_body(ctx):
                ctx.shared[_ECHO] = True
                return None
            return self.echo_reply(ctx, b"")
        return Reply(self.status, self.payload, list(self.headers))

    def request_body(self, ctx: Ctx, body: bytes) -> Reply | None:
        if not ctx.shared.get(_ECHO):
            return None
        return self.echo_reply(ctx, body)

    def echo_reply(self, ctx: Ctx, raw: bytes) -> Reply:
        headers: dict[str, Any] = {}
        for name, value in ctx.headers.items():
            key = name.lower()
            cur = headers.get(key)
            if cur is None:
                headers[key] = value
            elif isinstance(cur, list):
                cur.append(value)
            else:
                headers[key] = [cur, value]
        hostport = headers.get("host")
        host = port = None
        if isinstance(hostport, str):
            h, sep, p = hostport.rpartition(":")
            if sep and p.isdigit() and not h.endswith(":"):
                host, port = h, int(p)
            else:
                host = hostport
        q = ctx.query.decode("latin-1")
        content: dict[str, Any] = {}
        if self.message is not None:
            content["message"] = self.message
        content["kong"] = {"node_id": process_uuid(), "worker_pid": os.getpid(), "hostname": _HOST}
        content["request"] = {
            "scheme": None,  # not in the plugin context
            "host": host,
            "port": port,
            "headers": headers,
            "query": parse_args(q[1:] if q.startswith("?") else q),
            "body": _parse_body(ctx, raw),
            "raw_body": raw.decode("utf-8", "replace"),
            "method": ctx.method,
            "path": ctx.path,
            "uri_captures": {"named": {}, "unnamed": []},
        }
        content["matched_route"] = _entity(ctx.route)
        content["matched_service"] = _entity(ctx.service)
        return Reply(self.status, orjson.dumps(content), [("Content-Type", JSON)])
