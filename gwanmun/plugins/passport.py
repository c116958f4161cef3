"""``passport``: after authentication, the upstream gets a short signed statement of who the caller is, instead of
the caller's credential (docs/passport.md).

It runs after the authentication plugins and ``acl`` (priority 700). For an authenticated request it removes the
client's credential (the ``Authorization`` header, API-key headers and query arguments, as configured) and adds
``X-Passport``: a JWS signed with the gateway's key (``gateway.passport``), carrying the consumer's id, username and
groups, the chosen claims of a verified JWT, and the service as audience. Minting is cached per identity and
audience (``reuse``), so a busy caller costs one signature per interval. A request that no plugin authenticated goes
on without a passport, or is refused with ``require_authentication``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import unquote_plus

from pydantic import Field, model_validator

from ..passport import PASSPORT_HEADER, PassportSigner
from .base import BuildEnv, Ctx, Plugin, PluginConfig, Reply
from .fastpath import PassportPath, _service_name

_HEADER = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"


class PassportConfig(PluginConfig):
    ttl: Annotated[int, Field(ge=1, le=3600)] = 60  # seconds a passport lives
    reuse: Annotated[int, Field(ge=0)] | None = None  # seconds a minted passport is reused; default ttl // 2
    header: Annotated[str, Field(pattern=_HEADER)] = PASSPORT_HEADER
    audience: Annotated[str, Field(min_length=1)] | None = None  # default: the service's name (else its id)
    claims: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)  # JWT claims carried over
    # the passport's preferred_username from this verified JWT claim (e.g. "sub") rather than the consumer's
    # username: for an application whose one credential vouches for many users
    username_claim: Annotated[str, Field(min_length=1)] | None = None
    require_authentication: bool = False  # 401 when no plugin authenticated the request
    remove_headers: list[Annotated[str, Field(pattern=_HEADER)]] = Field(
        default_factory=lambda: ["Authorization", "Proxy-Authorization", "apikey", "X-API-Key"])
    remove_query_args: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=lambda: ["apikey", "jwt"])

    @model_validator(mode="after")
    def _reuse(self) -> PassportConfig:
        if self.reuse is not None and self.reuse >= self.ttl:
            raise ValueError("reuse must be shorter than ttl")
        return self


class Passport(Plugin):
    name = "passport"
    # after jwt (1450), key-auth (1250), basic-auth (1100) and acl (950), and after request-transformer (801), so a
    # transformer can neither forge nor remove the passport
    priority = 700
    Config = PassportConfig

    def __init__(self, config: PassportConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        settings = env.passport
        if settings is None:
            raise ValueError("the passport plugin needs the gateway's signing keys: set gateway.passport.keys")
        self.signer = PassportSigner([k.model_dump() for k in settings.keys], issuer=settings.issuer,
                                     ttl=config.ttl, reuse=config.reuse)
        self.header = config.header
        self.claims = tuple(config.claims)
        # the client's credential and any passport it sent, removed in one pass
        self.remove_headers = frozenset(n.lower().encode("latin-1") for n in (*config.remove_headers, self.header))
        self.remove_args = frozenset(config.remove_query_args)
        self.access = PassportPath(  # type: ignore[method-assign]
            self, self.signer, self.header, self.remove_headers,
            fast=not self.claims and config.username_claim is None, remove_args=bool(self.remove_args),
            audience=config.audience).access

    def access_slow(self, ctx: Ctx) -> Reply | None:
        """The whole step (``access`` is ``fastpath.PassportPath``'s, which comes here unless the request is
        authenticated and the config carries no claims)."""
        h = ctx.headers
        consumer = ctx.consumer
        if not ctx.authenticated or consumer is None:
            h.remove(self.header)  # never the client's (the proxy drops X-Passport from clients; a custom name too)
            if self.config.require_authentication:
                return Reply.error_(401, "Unauthorized")
            return None
        h.remove_all(self.remove_headers)
        if self.remove_args and ctx.query:
            ctx.query = _without_args(ctx.query, self.remove_args)
        claims: dict[str, Any] = {}
        if self.claims and ctx.claims:
            for name in self.claims:
                if name in ctx.claims:
                    claims[name] = ctx.claims[name]
        audience = self.config.audience or _service_name(ctx.service)
        username = consumer.username
        claim = self.config.username_claim
        if claim is not None and ctx.claims and isinstance(ctx.claims.get(claim), str):
            username = ctx.claims[claim]
        token = self.signer.mint(consumer.id, username, list(consumer.groups), claims, ctx.request_id, audience)
        h.set(self.header, token)
        return None


def _without_args(query: bytes, names: frozenset[str]) -> bytes:
    """The query string without the named arguments; the others are kept byte for byte."""
    raw = query[1:] if query.startswith(b"?") else query
    kept = []
    for part in raw.split(b"&"):
        if unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) in names:
            continue
        kept.append(part)
    out = b"&".join(p for p in kept if p)
    return b"?" + out if out else b""
