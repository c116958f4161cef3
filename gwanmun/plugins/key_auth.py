"""``key-auth``: an API key in a header or a query parameter (Kong's key-auth plugin, priority 1250).

For each name in ``key_names``, in order: the header of that name (``key_in_header``), then the query parameter
(``key_in_query``); the first one present is the key. A name given twice (two headers, or ``?apikey=a&apikey=b``)
is refused ("Duplicate API key found"), as Kong does. The key is looked up by its SHA-256 digest in a dict built
when the plugin is built (``gwanmun.auth.secrets.key_digest``), so a check costs one hash and one dict lookup and its
timing says nothing about the stored keys; keys stored hashed (``sha256$<hex>``) never appear in memory in clear.

Answers (Kong 3.x): 401 "No API key found in request", 401 "Invalid authentication credentials", 401 "Duplicate API
key found", each with ``WWW-Authenticate: Key realm="<realm>"``. With ``anonymous`` set the request goes on as
that consumer instead (see ``identity``). ``hide_credentials`` removes the key's header and query parameter from
what the upstream gets.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated
from urllib.parse import unquote_plus

from pydantic import Field, field_validator

from gwanmun.auth.secrets import hash_key, key_digest
from gwanmun.plugins import identity
from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, Plugin, Reply
from gwanmun.plugins.fastpath import KeyAuthPath

log = logging.getLogger("gwanmun.plugins.key_auth")

_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_HASHED = re.compile(r"sha256\$[0-9a-f]{64}\Z")

NO_KEY = "No API key found in request"
INVALID = "Invalid authentication credentials"
DUPLICATE = "Duplicate API key found"


class KeyAuthConfig(identity.AuthConfig):
    key_names: Annotated[list[str], Field(min_length=1)] = ["apikey"]
    key_in_header: bool = True
    key_in_query: bool = True
    key_in_body: bool = False
    hide_credentials: bool = False
    run_on_preflight: bool = True
    realm: str | None = None

    @field_validator("key_names", mode="before")
    @classmethod
    def _null_names(cls, v: object) -> object:
        return ["apikey"] if v is None else v

    @field_validator("key_names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not _NAME.match(name):
                raise ValueError(f"key name {name!r} must be 1 to 128 letters, digits, '-' or '_'")
        return list(dict.fromkeys(v))

    @field_validator("key_in_body")
    @classmethod
    def _body(cls, v: bool) -> bool:
        if v:
            raise ValueError("key_in_body is not supported yet: send the key in a header or the query string")
        return v


def _query_args(raw: bytes) -> list[tuple[str, str | None, bytes]]:
    """``a=1&b`` -> [(name, value or None when there is no '=', the raw pair)], names and values URL-decoded. Empty
    pairs (``a=1&&b=2``) are kept, with an empty name, so the query can be rebuilt as it was sent."""
    out = []
    for pair in raw.split(b"&"):
        k, eq, v = pair.partition(b"=")
        name = k.decode("latin-1")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        value: str | None = None
        if eq:
            value = v.decode("latin-1")
            if "%" in value or "+" in value:
                value = unquote_plus(value)
        out.append((name, value, pair))
    return out


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 1250
    Config = KeyAuthConfig

    def __init__(self, config: KeyAuthConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.anonymous_consumer = identity.resolve_anonymous(env, config.anonymous)
        self.key_names = tuple(config.key_names)
        self.www_authenticate = f'Key realm="{config.realm or "gwanmun"}"'
        # digest of the key -> (consumer, credential as the request sees it)
        self.keys: dict[str, tuple[Consumer, Credential]] = {}
        for cred in env.keyauth:
            if cred.hashed:
                if not _HASHED.match(cred.key):
                    # an hmac-sha256 hash needs the pepper, which the gateway does not have; anything else would be
                    # taken for a plain key, making the hash itself a valid key: never
                    log.warning("key-auth: credential %s: stored hash is not 'sha256$<64 hex>', skipped", cred.id)
                    continue
                digest = cred.key
            else:
                digest = key_digest(cred.key)
            if digest in self.keys:
                log.warning("key-auth: credential %s has the same key as another one, skipped", cred.id)
                continue
            self.keys[digest] = (cred.consumer, Credential(cred.id, cred.id, "key-auth"))
        self.access = KeyAuthPath(  # type: ignore[method-assign]
            self, self.key_names, self.keys,
            fast=config.key_in_header and self.anonymous_consumer is None and config.run_on_preflight,
            in_query=config.key_in_query, hide=config.hide_credentials).access

    def _fail(self, ctx: Ctx, message: str) -> Reply | None:
        if self.anonymous_consumer is not None:
            identity.anonymous(ctx, self.anonymous_consumer)
            return None
        return Reply.error_(401, message, [("WWW-Authenticate", self.www_authenticate)])

    def access_slow(self, ctx: Ctx) -> Reply | None:
        """The whole check (``access`` is ``fastpath.KeyAuthPath``'s, which comes here for all but the usual
        case)."""
        cfg = self.config
        if identity.skip(ctx, self.anonymous_consumer, cfg.run_on_preflight):
            return None
        args: list[tuple[str, str | None, bytes]] | None = None
        key: str | None = None
        found: str | None = None
        for name in self.key_names:
            if cfg.key_in_header:
                values = ctx.headers.get_all(name)
                if len(values) > 1:
                    return self._fail(ctx, DUPLICATE)
                if values:
                    key, found = values[0], name
                    break
            if cfg.key_in_query and len(ctx.query) > 1:
                if args is None:
                    args = _query_args(ctx.query[1:])
                qvalues = [v for n, v, _ in args if n == name]
                if len(qvalues) > 1:
                    return self._fail(ctx, DUPLICATE)
                if qvalues and qvalues[0] is not None:  # a bare "?apikey" is no key (Kong: a boolean)
                    key, found = qvalues[0], name
                    break
        if found is not None and cfg.hide_credentials:
            self._hide(ctx, found, args)
        if not key:
            return self._fail(ctx, NO_KEY)
        hit = self.keys.get(hash_key(key))
        if hit is None:
            return self._fail(ctx, INVALID)
        identity.authenticated(ctx, hit[0], hit[1])
        return None

    @staticmethod
    def _hide(ctx: Ctx, name: str, args: list[tuple[str, str | None, bytes]] | None) -> None:
        """Remove the key's header and query parameter (every copy, as Kong); other query bytes are kept as sent."""
        ctx.headers.remove(name)
        if len(ctx.query) <= 1:
            return
        if args is None:
            args = _query_args(ctx.query[1:])
        if any(n == name for n, _, _ in args):
            kept = b"&".join(raw for n, _, raw in args if n != name)
            ctx.query = b"?" + kept if kept else b""
