"""``jwt``: a signed JSON Web Token (Kong's jwt plugin, priority 1450), verified with ``gwanmun.auth.jwt``.

The token is looked for in the query parameters ``uri_param_names``, then the cookies ``cookie_names``, then the
headers ``header_names`` (``Bearer <token>``), and nowhere else. Two different tokens: 401 "Multiple tokens
provided".

Two ways to find the key:

- **Kong's** (default): the token's ``key_claim_name`` claim (``iss``) names a ``jwt_secrets`` credential; its
  ``algorithm`` must be the token's ``alg``; its consumer is the request's consumer. The keys are parsed once, when
  the plugin is built, each bound to its one algorithm (so an RSA public key can never act as an HMAC secret).
- **JWKS** (``jwks_uri``): the token's ``kid`` names a key of the identity provider's key set, fetched, cached and
  refreshed by ``gwanmun.auth.jwks.JWKSClient`` (started on first use, closed with the plugin). The consumer is the
  one whose id, username or custom_id equals the ``consumer_claim`` claim (``sub``); when none does (or
  ``consumer_claim`` is null) the request is still authenticated, with no consumer: ``X-Credential-Identifier`` is
  the key's ``kid`` and the claims are in ``ctx.claims``. Put an ``acl`` plugin after it to require a consumer.

Then the claims (``claims_to_verify``, ``maximum_expiration``, ``issuers``, ``audiences``, with ``leeway``). The
verified claims go to ``ctx.claims`` (read-only: the dict may be shared with the verification cache) and the token
to ``ctx.shared["authenticated_jwt_token"]``; forwarding claims upstream is the passport plugin's job.

Every rejection is a 401 with Kong's message ("Unauthorized" when there is no token, then "Invalid signature",
"Invalid algorithm", "No credentials found for given 'iss'", ...), never the token or a key, and
``WWW-Authenticate: Bearer [realm="..."] error="invalid_token"``. A failed claim check is answered as Kong does,
``{"exp": "token expired"}``, with our ``message`` beside it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Awaitable, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gwanmun.auth.jwks import JWKSClient
from gwanmun.auth.jwt import JWTError, JWTKey, JWTVerifier, TokenLocator, valid_id
from gwanmun.plugins import identity
from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, Plugin, Reply
from gwanmun.plugins.fastpath import JwtPath

log = logging.getLogger("gwanmun.plugins.jwt")

UNAUTHORIZED = "Unauthorized"
MAX_EXPIRATION = 31536000  # Kong's bound on maximum_expiration (a year)

_CLAIM_OF = {"expired": "exp", "exp_invalid": "exp", "exp_too_far": "exp", "not_yet_valid": "nbf",
             "nbf_invalid": "nbf"}

Name = Annotated[str, Field(min_length=1, max_length=256)]


def _names(v: list[str], what: str) -> list[str]:
    for n in v:
        if not n.isprintable() or any(c in n for c in " ;,=\t"):
            raise ValueError(f"{what}: {n!r} is not a valid name")
    return list(dict.fromkeys(v))


class JwtConfig(identity.AuthConfig):
    uri_param_names: list[Name] = ["jwt"]
    cookie_names: list[Name] = []
    header_names: list[Name] = ["authorization"]
    claims_to_verify: list[Literal["exp", "nbf"]] = []
    key_claim_name: Name = "iss"
    secret_is_base64: bool = False
    run_on_preflight: bool = True
    maximum_expiration: Annotated[float, Field(ge=0, le=MAX_EXPIRATION)] = 0
    realm: str | None = None
    # gwanmun
    issuers: list[Name] = []
    audiences: list[Name] = []
    leeway: Annotated[float, Field(ge=0, le=3600)] = 0
    jwks_uri: str | None = None
    consumer_claim: Name | None = "sub"

    @field_validator("uri_param_names", "header_names", mode="before")
    @classmethod
    def _null_default(cls, v: object, info: Any) -> object:
        return cls.model_fields[info.field_name].default if v is None else v

    @field_validator("cookie_names", "claims_to_verify", "issuers", "audiences", mode="before")
    @classmethod
    def _null_empty(cls, v: object) -> object:
        return [] if v is None else v

    @field_validator("uri_param_names", "cookie_names")
    @classmethod
    def _param_names(cls, v: list[str], info: Any) -> list[str]:
        return _names(v, info.field_name)

    @field_validator("header_names")
    @classmethod
    def _header_names(cls, v: list[str]) -> list[str]:
        for n in v:
            if not all(c.isalnum() or c in "-_" for c in n):
                raise ValueError(f"header_names: {n!r} is not a header name")
        return list(dict.fromkeys(n.lower() for n in v))

    @field_validator("claims_to_verify")
    @classmethod
    def _claims(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("key_claim_name", "consumer_claim")
    @classmethod
    def _claim_name(cls, v: str | None) -> str | None:
        if v is not None and not valid_id(v):
            raise ValueError("must be a printable claim name")
        return v

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("jwks_uri must be an absolute http or https URL")
        return v

    @model_validator(mode="after")
    def _rules(self) -> JwtConfig:
        if self.maximum_expiration > 0 and "exp" not in self.claims_to_verify:
            raise ValueError("maximum_expiration > 0 requires 'exp' in claims_to_verify")
        if not (self.uri_param_names or self.cookie_names or self.header_names):
            raise ValueError("set at least one of uri_param_names, cookie_names and header_names")
        return self


class Jwt(Plugin):
    name = "jwt"
    priority = 1450
    Config = JwtConfig

    def __init__(self, config: JwtConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.anonymous_consumer = identity.resolve_anonymous(env, config.anonymous)
        self.locator = TokenLocator(config.uri_param_names, config.cookie_names, config.header_names)
        self.wanted = (*config.header_names, "cookie") if config.cookie_names else tuple(config.header_names)
        self.verifier = JWTVerifier(claims_to_verify=config.claims_to_verify,
                                    maximum_expiration=config.maximum_expiration,
                                    key_claim_name=config.key_claim_name, issuers=config.issuers,
                                    audiences=config.audiences, leeway=config.leeway)
        base = f'Bearer realm="{config.realm}"' if config.realm else "Bearer"
        self.www_authenticate = base
        self.www_authenticate_error = base + ' error="invalid_token"'
        self.keys: dict[str, JWTKey] = {}  # the key claim's value -> key
        self.owners: dict[JWTKey, tuple[Consumer, Credential]] = {}
        self.jwks: JWKSClient | None = None
        self._started = False
        self.jwks_mode = bool(config.jwks_uri)
        self.access = JwtPath(  # type: ignore[method-assign]
            self, tuple(config.header_names), tuple(n.encode("latin-1") + b"=" for n in config.uri_param_names),
            fast=not config.cookie_names and self.anonymous_consumer is None and config.run_on_preflight
            and not self.jwks_mode,
            check_exp=self.verifier._exp, check_nbf=self.verifier._nbf,
            maximum_expiration=config.maximum_expiration, leeway=config.leeway).access
        if config.jwks_uri:
            self.jwks = JWKSClient(config.jwks_uri)
            return
        for s in env.jwt_secrets:
            if not valid_id(s.key):
                log.warning("jwt: credential %s: key is not a printable string of at most 256 characters, skipped",
                            s.id)
                continue
            if s.key in self.keys:
                log.warning("jwt: credential %s repeats the key of another one, skipped", s.id)
                continue
            field = "secret" if s.algorithm.startswith("HS") else "rsa_public_key"
            material = getattr(s, field)
            if material is None:
                raise ValueError(f"jwt_secrets {s.id}: no {field} for {s.algorithm}")
            try:
                key = JWTKey(s.algorithm, material, kid=s.key, secret_is_base64=config.secret_is_base64)
            except JWTError as e:
                raise ValueError(f"jwt_secrets {s.id}: {e.message}") from None
            if key.weak:
                log.warning("jwt: credential %s: weak key (%s secret shorter than its hash, or RSA under 2048 bits)",
                            s.id, s.algorithm)
            self.keys[s.key] = key
            self.owners[key] = (s.consumer, Credential(s.id, s.key, "jwt"))

    def carry_over(self, old: Plugin) -> None:
        """Same config: keep the running JWKS client (its keys and refresher) and the verification cache."""
        if isinstance(old, Jwt) and old.jwks is not None and self.jwks is not None:
            self.jwks, self._started, self.verifier = old.jwks, old._started, old.verifier
            old.jwks = None

    async def aclose(self) -> None:
        client, self.jwks = self.jwks, None
        if client is not None:
            await client.aclose()

    def _reject(self, ctx: Ctx, err: JWTError | None) -> Reply | None:
        if self.anonymous_consumer is not None:
            identity.anonymous(ctx, self.anonymous_consumer)
            return None
        if err is None:
            return Reply.error_(401, UNAUTHORIZED, [("WWW-Authenticate", self.www_authenticate)])
        body = {"message": err.message}
        claim = _CLAIM_OF.get(err.code)
        if claim is not None:
            body[claim] = err.message  # Kong's body for a failed claim check
        return Reply(401, body, [("WWW-Authenticate", self.www_authenticate_error)], error=True)

    def access_slow(self, ctx: Ctx) -> Reply | None | Awaitable[Reply | None]:
        """The whole check (``access`` is ``fastpath.JwtPath``'s, which comes here for all but a token it has
        seen this plugin accept)."""
        if identity.skip(ctx, self.anonymous_consumer, self.config.run_on_preflight):
            return None
        get = ctx.headers.get
        try:
            found = self.locator.find(ctx.query[1:], {n: v for n in self.wanted if (v := get(n)) is not None})
        except JWTError as e:  # multiple tokens
            return self._reject(ctx, e)
        if found is None:
            return self._reject(ctx, None)
        if self.jwks_mode:
            return self._access_jwks(ctx, found.token)
        try:
            verified = self.verifier.verify(found.token, self.keys)
        except JWTError as e:
            log.debug("jwt: rejected (%s)", e.code)
            return self._reject(ctx, e)
        consumer, credential = self.owners[verified.key]
        ctx.claims = verified.claims
        ctx.shared["authenticated_jwt_token"] = found.token
        identity.authenticated(ctx, consumer, credential)
        return None

    async def _access_jwks(self, ctx: Ctx, token: str) -> Reply | None:
        client = self.jwks
        if client is None:  # closed: the config was replaced while this request waited
            return self._reject(ctx, JWTError("unknown_key", "No credentials found for given 'kid'"))
        if not self._started:
            self._started = True
            client.start()
        try:
            verified = await self.verifier.verify_jwks(token, client)
        except JWTError as e:
            log.debug("jwt: rejected (%s)", e.code)
            return self._reject(ctx, e)
        consumer = None
        name = self.config.consumer_claim
        if name is not None:
            value = verified.claims.get(name)
            if valid_id(value):
                consumer = self.env.consumer(value)
        kid = verified.key.kid or "jwks"
        ctx.claims = verified.claims
        ctx.shared["authenticated_jwt_token"] = token
        identity.authenticated(ctx, consumer, Credential(f"jwks:{kid}", kid, "jwt"))
        return None
