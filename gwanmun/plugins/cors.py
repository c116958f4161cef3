"""cors (Kong priority 2000): Cross-Origin Resource Sharing, with Kong's rules.

- Preflight = ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``: answered here with 200 and the
  ``Access-Control-Allow-*`` headers, unless ``preflight_continue`` (then it goes upstream untouched).
- Other requests: ``header_filter`` adds ``Access-Control-Allow-Origin`` (and ``Vary: Origin`` when the answer
  depends on the origin), ``Access-Control-Allow-Credentials``, ``Access-Control-Expose-Headers``.

Origins: no ``origins`` or just ``["*"]`` allows every origin (``*``). A single entry made only of
``[A-Za-z0-9.:/-]`` is sent as it is. Otherwise each entry is compared with the request's ``Origin``: an entry with
other characters is a regex (anchored at both ends; matched against the origin's host when the entry has no ``:``,
else against ``scheme://host[:port]``), the others are compared exactly (default ports dropped). A match echoes the
normalised request origin; no match sends no ``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ._traffic import Record
from .base import BuildEnv, Ctx, Plugin, Reply, Response

METHODS = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT")
Method = Literal["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT"]

_PLAIN = re.compile(r"[A-Za-z0-9.:/-]+\Z")
_SKIP = "cors.skip"  # ctx.shared key: this request was a preflight (answered, or passed upstream)
_CACHE_SIZE = 1024
ACAO = "Access-Control-Allow-Origin"
ACAC = "Access-Control-Allow-Credentials"


def _normalize(origin: str) -> tuple[str, str]:
    """(domain, host) of an origin: ``scheme://host[:port]`` without a default port, and the host alone."""
    try:
        u = urlsplit(origin)
        host = u.hostname
        port = u.port
    except ValueError:
        return origin, origin
    if not host or not u.scheme:
        return origin, origin
    if (u.scheme == "http" and port == 80) or (u.scheme == "https" and port == 443):
        port = None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{u.scheme}://{host}" + (f":{port}" if port is not None else ""), host


class Cors(Plugin):
    name = "cors"
    priority = 2000

    class Config(Record):
        origins: tuple[str, ...] | None = Field(None, description="allowed origins: exact, regex, or '*'")
        headers: tuple[str, ...] | None = Field(None, description="Access-Control-Allow-Headers")
        exposed_headers: tuple[str, ...] | None = Field(None, description="Access-Control-Expose-Headers")
        methods: tuple[Method, ...] = Field(METHODS, description="Access-Control-Allow-Methods")
        max_age: float | None = Field(None, description="Access-Control-Max-Age, seconds")
        credentials: bool = False
        private_network: bool = False
        preflight_continue: bool = False
        allow_origin_absent: bool = True

        @field_validator("origins")
        @classmethod
        def _origins(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
            for o in v or ():
                if o == "*":
                    continue
                try:
                    re.compile(o)
                except re.error:
                    raise ValueError(f"'{o}' is not a valid regex") from None
            return v

        @field_validator("headers", "exposed_headers")
        @classmethod
        def _values(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
            for h in v or ():
                if any(c in h for c in "\r\n\0"):
                    raise ValueError(f"invalid header value {h!r}")
            return v

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        c = config
        origins = c.origins or ()
        self.credentials = c.credentials
        self.allow_all = len(origins) == 0 or origins == ("*",)  # '*' without looking at the request
        self.fixed = origins[0] if len(origins) == 1 and _PLAIN.match(origins[0]) else None
        self.any_star = "*" in origins  # a '*' among others: every request with an Origin is allowed
        entries: list[tuple[Any, bool, str]] = []  # (compiled regex | None, by_host, normalised domain)
        for o in origins:
            if o == "*":
                continue
            if _PLAIN.match(o):
                entries.append((None, False, _normalize(o)[0]))
            else:
                pattern = o if o.endswith("$") else o + "$"
                if pattern.startswith("^"):
                    pattern = pattern[1:]
                entries.append((re.compile(pattern), ":" not in o, ""))
        self.entries = tuple(entries)
        self.seen: dict[str, tuple[str, str]] = {}  # request origin -> (domain, host)
        self.allow_absent = c.allow_origin_absent
        self.expose = ",".join(c.exposed_headers) if c.exposed_headers else None
        # the preflight answer's fixed part
        self.preflight_continue = c.preflight_continue
        self.allow_headers = ",".join(c.headers) if c.headers else None
        self.allow_methods = ",".join(c.methods)
        ma = c.max_age
        self.max_age = None if ma is None else (str(int(ma)) if float(ma).is_integer() else str(ma))
        self.private_network = c.private_network

    # -- origin -------------------------------------------------------------------------------------------------
    def _origin(self, req_origin: str | None) -> tuple[str | None, bool, bool]:
        """(Access-Control-Allow-Origin value or None, allow_all, vary)."""
        if self.allow_all:
            return "*", True, False
        if self.fixed is not None:
            return self.fixed, False, True
        if req_origin is None:
            return None, False, True
        if self.any_star:
            return "*", True, True
        n = self.seen.get(req_origin)
        if n is None:
            n = _normalize(req_origin)
            if len(self.seen) >= _CACHE_SIZE:
                self.seen.clear()
            self.seen[req_origin] = n
        domain, host = n
        for regex, by_host, exact in self.entries:
            if regex is None:
                if domain == exact:
                    return domain, False, True
            elif regex.match(host if by_host else domain):
                return domain, False, True
        return None, False, True

    def _apply(self, req_origin: str | None) -> list[tuple[str, str]]:
        """The origin and credentials headers, in order; a None value means "clear it"."""
        value, allow_all, vary = self._origin(req_origin)
        out: list[tuple[str, Any]] = []
        if vary:
            out.append(("Vary", "Origin"))
        out.append((ACAO, value))
        if self.credentials:
            if not allow_all:
                out.append((ACAC, "true"))
            elif req_origin is not None:
                # '*' cannot go with credentials: echo the request's origin instead
                if not vary:
                    out.append(("Vary", "Origin"))
                out.append((ACAO, req_origin))
                out.append((ACAC, "true"))
        return out

    # -- phases -------------------------------------------------------------------------------------------------
    def access(self, ctx: Ctx) -> Reply | None:
        if ctx.method != "OPTIONS":
            return None
        h = ctx.headers
        req_origin = h.get("Origin")
        if req_origin is None or h.get("Access-Control-Request-Method") is None:
            return None
        ctx.shared[_SKIP] = True  # no CORS headers on the preflight's response from here on
        if self.preflight_continue:
            return None
        headers: dict[str, str] = {}
        for name, value in self._apply(req_origin):
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        if self.allow_headers is not None:
            headers["Access-Control-Allow-Headers"] = self.allow_headers
        else:
            acrh = h.get("Access-Control-Request-Headers")
            if acrh is not None:
                headers["Access-Control-Allow-Headers"] = acrh
        headers["Access-Control-Allow-Methods"] = self.allow_methods
        if self.max_age is not None:
            headers["Access-Control-Max-Age"] = self.max_age
        if self.private_network and h.get("Access-Control-Request-Private-Network") == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Reply(200, b"", list(headers.items()))

    def header_filter(self, ctx: Ctx, resp: Response) -> None:
        if ctx.shared.get(_SKIP):
            return
        req_origin = ctx.headers.get("Origin")
        if req_origin is None and not self.allow_absent:
            return
        rh = resp.headers
        for name, value in self._apply(req_origin):
            if value is None:
                rh.remove(name)
            elif name == "Vary":
                if not any("origin" in v.lower() for v in rh.get_all("Vary")):
                    rh.add("Vary", "Origin")
            elif name in rh:
                rh.set(name, value)
            else:
                rh.add(name, value)  # the usual case: cheaper than set()'s remove + add
        if self.expose is not None:
            if "Access-Control-Expose-Headers" in rh:
                rh.set("Access-Control-Expose-Headers", self.expose)
            else:
                rh.add("Access-Control-Expose-Headers", self.expose)
