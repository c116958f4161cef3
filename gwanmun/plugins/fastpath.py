"""The accepted request of ``key-auth``, ``jwt`` and ``passport``, compiled with the proxy (setup.py).

Each of these plugins (pure Python, with its pydantic config) builds one path object here and hands the chain its
bound ``access``. The path handles the common case, a request whose credential is in a header and is accepted, and
gives everything else to the plugin's own ``access_slow``, the reference implementation: a key or token in the
query or a cookie, two credentials, a failure and its Kong message, the anonymous fallback, OPTIONS without
``run_on_preflight``, JWKS. So every answer and message is the plugin's; this only makes the usual request cheap.

- ``KeyAuthPath``: the key's SHA-256 digest looked up as the plugin does (``auth.secrets.hash_key``).
- ``JwtPath``: a token that this plugin instance verified before (signature, algorithm, key, issuer, audience) is
  remembered with its outcome (at most ``CACHE`` tokens, only verified ones, so bad tokens cannot fill it); on a
  hit only the time claims (exp, nbf, maximum_expiration, with leeway) are checked again. ``JWTVerifier`` already
  skips the signature of a token it verified; this skips the parse and the key look-up too. A config change makes a
  new plugin, so a new, empty memory.
- ``PassportPath``: the passport minted for a consumer and service is reused until the signer's reuse interval ends
  (``PassportSigner.mint_until``), without the signer's lock and cache key per request.
"""

from __future__ import annotations

from hashlib import sha256
from time import time
from typing import Any, Final

from gwanmun.auth.secrets import SHA256_PREFIX

from .context import Ctx

CACHE: Final = 1024  # remembered tokens per jwt plugin instance


class KeyAuthPath:
    def __init__(self, plugin: Any, key_names: tuple[str, ...], keys: dict[str, Any], fast: bool,
                 in_query: bool, hide: bool) -> None:
        self.plugin = plugin
        self.key_names = key_names
        # the plugin's keys ("sha256$<hex>" -> (consumer, credential)) by raw digest: no hex per request
        self.digests = {bytes.fromhex(k[len(SHA256_PREFIX):]): v for k, v in keys.items()
                        if k.startswith(SHA256_PREFIX)}
        self.fast = fast  # key_in_header, no anonymous, run_on_preflight
        self.in_query = in_query
        self.hide = hide

    def access(self, ctx: Ctx) -> Any:
        if not self.fast or self.in_query and len(ctx.query) > 1:
            return self.plugin.access_slow(ctx)
        headers = ctx.headers
        for name in self.key_names:
            values = headers.get_all(name)
            if values:
                if len(values) > 1 or not values[0]:
                    break
                hit = self.digests.get(sha256(values[0].encode()).digest())
                if hit is None:
                    break
                if self.hide:
                    headers.remove(name)
                ctx.authenticate(hit[0], hit[1])
                return None
        return self.plugin.access_slow(ctx)


class JwtPath:
    def __init__(self, plugin: Any, header_names: tuple[str, ...], uri_names: tuple[bytes, ...], fast: bool,
                 check_exp: bool, check_nbf: bool, maximum_expiration: float, leeway: float) -> None:
        self.plugin = plugin
        self.header_names = header_names
        self.uri_names = uri_names  # b"jwt=": a query holding one of these goes the plugin's way
        self.one_header = len(header_names) == 1
        self.fast = fast  # no cookies, no anonymous, run_on_preflight, no JWKS
        self.check_exp = check_exp
        self.check_nbf = check_nbf
        self.maximum_expiration = maximum_expiration
        self.leeway = leeway
        # token -> (claims, consumer, credential, exp, nbf) of a token this instance accepted
        self.seen: dict[str, tuple[dict[str, Any], Any, Any, float, float]] = {}

    def access(self, ctx: Ctx) -> Any:
        if not self.fast:
            return self.plugin.access_slow(ctx)
        query = ctx.query
        if len(query) > 1:
            if b"%" in query or b"+" in query:  # encoded names: the plugin decodes them
                return self.plugin.access_slow(ctx)
            for arg in self.uri_names:
                if arg in query:
                    return self.plugin.access_slow(ctx)
        headers = ctx.headers
        if self.one_header:  # the usual request: "Bearer <a token this plugin accepted before>"
            raw = headers.get(self.header_names[0])
            if raw is not None and raw.startswith("Bearer "):
                known = raw[7:]
                hit = self.seen.get(known)
                if hit is not None:  # the very string the plugin's parser took as a token: no need to parse it
                    return self._accept(ctx, known, hit)
        token = ""
        for name in self.header_names:
            raw = headers.get(name)
            if raw:
                # "Bearer <token>" as TokenLocator's regex (\s*bearer\s+(\S+)\s*, any case), without a regex
                parts = raw.split()
                if len(parts) == 2 and parts[0].lower() == "bearer":
                    if token and parts[1] != token:
                        return self.plugin.access_slow(ctx)  # two tokens: its answer
                    token = parts[1]
        if not token:
            return self.plugin.access_slow(ctx)
        hit = self.seen.get(token)
        if hit is None:
            return self._verify(ctx, token)
        return self._accept(ctx, token, hit)

    def _accept(self, ctx: Ctx, token: str, hit: tuple[dict[str, Any], Any, Any, float, float]) -> Any:
        """A token this plugin accepted before: only its time claims are checked again."""
        claims, consumer, credential, exp, nbf = hit
        now = time()
        leeway = self.leeway
        if self.check_exp and (exp <= now - leeway or self.maximum_expiration > 0
                               and exp - now > self.maximum_expiration + leeway):
            return self.plugin.access_slow(ctx)
        if self.check_nbf and nbf > now + leeway:
            return self.plugin.access_slow(ctx)
        ctx.claims = claims
        ctx.shared["authenticated_jwt_token"] = token
        ctx.authenticate(consumer, credential)
        return None

    def _verify(self, ctx: Ctx, token: str) -> Any:
        """The plugin verifies it; if it accepted this very token, remember the outcome."""
        result = self.plugin.access_slow(ctx)
        claims = ctx.claims
        if result is None and ctx.authenticated and claims is not None \
                and ctx.shared.get("authenticated_jwt_token") == token:
            exp: Any = claims.get("exp")
            nbf: Any = claims.get("nbf")
            seen = self.seen
            if len(seen) >= CACHE:
                del seen[next(iter(seen))]  # oldest first
            # exp and nbf are numbers when they are checked (the plugin refused the token otherwise)
            seen[token] = (claims, ctx.consumer, ctx.credential, float(exp) if self.check_exp else 0.0,
                           float(nbf) if self.check_nbf else 0.0)
        return result


class PassportPath:
    def __init__(self, plugin: Any, signer: Any, header: str, remove_headers: frozenset[bytes], fast: bool,
                 remove_args: bool, audience: str | None) -> None:
        self.plugin = plugin
        self.signer = signer
        self.header = header
        self.remove_headers = remove_headers  # includes ``header``: a client's passport never goes up
        self.sizes = frozenset([len(n) for n in remove_headers])
        self.fast = fast  # no claims carried over, no username_claim
        self.remove_args = remove_args
        self.audience = audience
        # (consumer, id of the service) -> (reuse until, token); both live as long as this plugin instance's config
        self.minted: dict[tuple[Any, int], tuple[float, bytes]] = {}
        self.wire = header.encode("latin-1")  # a token: checked by the plugin's config
        self.key = self.wire.lower()

    def access(self, ctx: Ctx) -> Any:
        consumer = ctx.consumer
        if not self.fast or consumer is None or not ctx.authenticated or self.remove_args and ctx.query:
            return self.plugin.access_slow(ctx)
        headers = ctx.headers
        headers.remove_all(self.remove_headers, self.sizes)
        service = ctx.service
        key = (consumer, id(service))
        now = time()
        hit = self.minted.get(key)
        if hit is not None and now < hit[0]:
            token = hit[1]
        else:
            audience = self.audience or _service_name(service)
            minted_token, until = self.signer.mint_until(consumer.id, consumer.username, list(consumer.groups), {},
                                                         ctx.request_id, audience)
            token = minted_token.encode("latin-1")  # base64url and dots
            minted = self.minted
            if len(minted) >= CACHE:
                minted.clear()
            minted[key] = (until, token)
        headers.add_made(self.key, self.wire, token)
        return None


def _service_name(service: Any) -> str:
    return str(getattr(service, "name", None) or getattr(service, "id", None) or "gwanmun")
