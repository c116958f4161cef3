"""request-size-limiting (Kong priority 951): refuse request bodies over a size.

- A valid ``Content-Length`` over the limit: 413 ``{"message": "Request size limit exceeded"}`` (417 when the client
  sent ``Expect: 100-continue``, as Kong), before any of the body is read.
- No valid ``Content-Length`` but a body (``Transfer-Encoding: chunked``): with ``require_content_length`` the request
  is refused with 411 "A valid Content-Length header is required"; otherwise the limit is handed to the proxy in
  ``ctx.shared["max_body"]`` (bytes; the smallest wins when several plugins set it) and the proxy counts the body as
  it streams: past the limit it answers 413 with ``LIMIT_EXCEEDED`` (if nothing was sent upstream yet; else it
  aborts both connections). The body is never buffered by this plugin (``buffers_request`` is false).
- A request without a body (no Content-Length, no Transfer-Encoding) passes, even with ``require_content_length``
  (Kong's 411 there would refuse every GET).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ._traffic import Record
from .base import BuildEnv, Ctx, Plugin, Reply

LIMIT_EXCEEDED = "Request size limit exceeded"
LENGTH_REQUIRED = "A valid Content-Length header is required"
MAX_BODY = "max_body"  # ctx.shared key the proxy enforces while streaming the body
UNITS = {"bytes": 1, "kilobytes": 1024, "megabytes": 1048576}


class RequestSizeLimiting(Plugin):
    name = "request-size-limiting"
    priority = 951

    class Config(Record):
        allowed_payload_size: int = Field(128, ge=0, description="the limit, in size_unit")
        size_unit: Literal["megabytes", "kilobytes", "bytes"] = "megabytes"
        require_content_length: bool = False

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.limit = config.allowed_payload_size * UNITS[config.size_unit]
        self.require = config.require_content_length

    def _too_big(self, ctx: Ctx) -> Reply:
        expect = ctx.headers.get("Expect")
        if expect is not None and expect.strip().lower() == "100-continue":
            return Reply.error_(417, LIMIT_EXCEEDED)
        return Reply.error_(413, LIMIT_EXCEEDED)

    def access(self, ctx: Ctx) -> Reply | None:
        h = ctx.headers
        cl = h.get("Content-Length")
        if cl is not None:
            cl = cl.strip()
            if cl.isascii() and cl.isdigit():
                return self._too_big(ctx) if int(cl) > self.limit else None
        elif h.get("Transfer-Encoding") is None:
            return None  # no body
        if self.require:
            return Reply.error_(411, LENGTH_REQUIRED)
        shared = ctx.shared
        cur = shared.get(MAX_BODY)
        if cur is None or self.limit < cur:
            shared[MAX_BODY] = self.limit
        return None
