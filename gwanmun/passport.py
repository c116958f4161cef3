"""Passports: short signed statements of who the client is, minted at the edge for the backends.

The gateway authenticates a client once (key, JWT, basic, ...), then sends the backend a *passport* in the
``X-Passport`` header instead of the client's credential (Baemin's passport pattern). A passport is a compact JWS
(JWT) signed with the gateway's own key; backends verify it offline against the gateway's JWKS and never see the
client's credential. The full contract (claims, header, rotation, verifying in other languages) is in
docs/passport.md.

Header: ``{"alg": "EdDSA" | "ES256", "kid": <signing key id>, "typ": "passport+jwt"}``.
Claims: ``iss`` (the gateway), ``sub`` (consumer id), ``preferred_username`` (when known), ``groups``, the extra
claims the route chose, ``aud`` (the one service it is for), ``iat``, ``exp`` (``iat + ttl``), ``jti``.

Reuse and the request id. A passport is minted at most once per identity and audience per ``reuse`` interval:
``PassportSigner`` keeps a bounded LRU of recent passports keyed by (consumer id, username, groups, claims,
audience) and hands the same token out again while it is younger than ``reuse`` seconds, so it still has at least
``ttl - reuse`` seconds to live when a backend gets it. A reused token cannot name each request, so the per-request id
travels in the ``X-Request-ID`` header, never in the passport; ``jti`` is the id of the *mint*: the request id of
the request that minted it (or a generated id), which finds that request in the access log.

Cost, measured with ``timeit`` (best of 5) on the 2-core development machine (AMD EPYC, Python 3.11, PyJWT 2.15,
cryptography 48), per call, with two groups and one extra claim (a 421-byte token):

=========================  ==========  ==========
                           EdDSA       ES256
=========================  ==========  ==========
``mint``, signs            44 µs       40 µs
``mint``, reused token     1.2 µs      1.2 µs
``verify`` (dict JWKS)     168 µs      132 µs
=========================  ==========  ==========

The signature is most of a mint (Ed25519 32 µs, P-256 23 µs; PyJWT's JSON and base64 the rest), so with the default
``reuse`` a busy client costs one signature per 30 s per service and ~1 µs otherwise. Verifying is dominated by the
signature check (Ed25519 104 µs, P-256 64 µs here) and PyJWT's strict base64 checks.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import sys
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "ALGORITHMS",
    "PASSPORT_HEADER",
    "TYP",
    "JWKSUnavailable",
    "PassportError",
    "PassportSigner",
    "generate_key",
    "key_yaml",
    "print_new_key",
    "thumbprint",
    "verify",
]

PASSPORT_HEADER = "X-Passport"  # the request header that carries the passport to the backend
TYP = "passport+jwt"  # explicit typing (RFC 8725 3.11): no other JWT signed by the same key passes as a passport
ALGORITHMS = frozenset({"EdDSA", "ES256"})
RESERVED = frozenset({"iss", "sub", "aud", "iat", "exp", "nbf", "jti", "preferred_username", "groups"})
REQUIRED = ["iss", "sub", "aud", "iat", "exp", "jti"]
MAX_TOKEN = 8192  # bytes; a passport is ~400, anything far larger is not one of ours

# JWKS fetched from a URL (module globals so tests and backends can tune them).
JWKS_TTL = 60.0  # seconds a fetched JWKS is used before it is fetched again
JWKS_REFETCH = 5.0  # at most one fetch per URL per this many seconds (an unknown kid triggers one)
JWKS_STALE = 600.0  # seconds the last good JWKS keeps serving while fetches fail
JWKS_TIMEOUT = 5.0  # seconds per fetch
JWKS_MAX_BYTES = 1 << 20


class PassportError(Exception):
    """The passport is missing or invalid; the message says why (safe to log, not meant for the client)."""


class JWKSUnavailable(PassportError):
    """The JWKS URL could not be fetched (and no recent copy is held): a backend may answer 503 rather than 401."""


# --------------------------------------------------------------------------------------------------------- keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _public_jwk(private: Any, algorithm: str) -> dict[str, str]:
    """The RFC 7517 public JWK (required members only) of an Ed25519 or P-256 private key."""
    pub = private.public_key()
    if algorithm == "EdDSA":
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    nums = pub.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _b64(nums.x.to_bytes(32, "big")), "y": _b64(nums.y.to_bytes(32, "big"))}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the default ``kid`` of a generated key."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canon = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canon.encode()).digest())


def _load_private(pem: str | bytes, algorithm: str, where: str) -> Any:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{where}.algorithm: {algorithm!r} is not supported (use EdDSA or ES256)")
    try:
        key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}.private_key: not an unencrypted PEM private key ({exc})") from None
    if algorithm == "EdDSA" and not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where}.private_key: EdDSA needs an Ed25519 key, got {type(key).__name__}")
    if algorithm == "ES256" and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
        raise ValueError(f"{where}.private_key: ES256 needs a P-256 (secp256r1) EC key")
    return key


def generate_key(algorithm: str = "EdDSA", kid: str | None = None) -> dict[str, str]:
    """A new signing key: ``{"kid", "algorithm", "private_key"}`` (PKCS#8 PEM). ``kid`` defaults to the public key's
    RFC 7638 thumbprint, so it is stable and never collides by accident."""
    if algorithm == "EdDSA":
        private: Any = Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"algorithm {algorithm!r} is not supported (use EdDSA or ES256)")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return {"kid": kid or thumbprint(_public_jwk(private, algorithm)), "algorithm": algorithm, "private_key": pem}


def key_yaml(key: Mapping[str, str]) -> str:
    """``key`` as one YAML list item, ready to paste under a passport ``keys:`` list."""
    pem = "".join(f"    {line}\n" for line in key["private_key"].strip().splitlines())
    return (
        f"- kid: {json.dumps(key['kid'])}\n"  # a JSON string is a valid YAML double-quoted scalar
        f"  algorithm: {key['algorithm']}\n"
        f"  private_key: |\n{pem}"
    )


def print_new_key(algorithm: str = "EdDSA", kid: str | None = None, file: TextIO | None = None) -> dict[str, str]:
    """Generate a key and print it as YAML (for the CLI); returns the key."""
    key = generate_key(algorithm, kid)
    out = file or sys.stdout
    out.write(f"# passport signing key {key['kid']} ({algorithm}); secret: keep it out of version control\n")
    out.write(key_yaml(key))
    out.flush()
    return key


# ------------------------------------------------------------------------------------------------------ signing


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str
    algorithm: str
    private: Any
    jwk: dict[str, str]  # public, with kid/alg/use


def _freeze(claims: Mapping[str, Any]) -> Any:
    """A hashable, order-independent form of ``claims`` for the cache key."""
    if not claims:
        return ()
    try:
        items = tuple(sorted(claims.items()))
        hash(items)
        return items
    except TypeError:  # list or dict values
        return json.dumps(claims, sort_keys=True, separators=(",", ":"))


class PassportSigner:
    """Mints passports with the first of ``keys``; publishes all of them in ``jwks()``.

    ``keys``: ``[{"kid", "algorithm" ("EdDSA" | "ES256"), "private_key" (PEM)}, ...]``. Rotation is three config
    changes: add the new key *second* (published, not signing) and wait out the backends' JWKS cache time, then
    move it first (signing) and wait ``ttl`` + leeway, so every passport the old key signed has expired, then drop
    the old key.

    ``ttl``: seconds a passport lives (keep it short). ``reuse``: seconds a minted passport is handed out again for
    the same identity, claims and audience (default ``ttl // 2``; 0 mints every time). ``cache_size`` bounds the
    reuse cache (least recently used evicted first). ``clock`` returns epoch seconds (tests pass their own).

    One signer per worker process; ``mint`` is thread-safe. A config change builds a new signer (and a new cache).
    """

    __slots__ = ("issuer", "ttl", "reuse", "cache_size", "_key", "_keys", "_headers", "_clock", "_cache",
                 "_lock", "_jti_prefix", "_jti_seq")

    def __init__(
        self,
        keys: Sequence[Mapping[str, str]],
        issuer: str = "gwanmun",
        ttl: int = 60,
        reuse: int | None = None,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("keys: at least one signing key is required")
        if ttl <= 0:
            raise ValueError("ttl: must be > 0 seconds")
        reuse = ttl // 2 if reuse is None else reuse
        if not 0 <= reuse < ttl:
            raise ValueError("reuse: must be >= 0 and < ttl")
        if cache_size < 1:
            raise ValueError("cache_size: must be >= 1")
        loaded: list[_Key] = []
        for i, spec in enumerate(keys):
            kid, algorithm = spec.get("kid"), spec.get("algorithm", "EdDSA")
            if not isinstance(kid, str) or not kid:
                raise ValueError(f"keys[{i}].kid: a non-empty string is required")
            if any(k.kid == kid for k in loaded):
                raise ValueError(f"keys[{i}].kid: {kid!r} is used twice")
            private = _load_private(spec.get("private_key", ""), algorithm, f"keys[{i}]")
            jwk = {**_public_jwk(private, algorithm), "kid": kid, "alg": algorithm, "use": "sig"}
            loaded.append(_Key(kid, algorithm, private, jwk))
        self.issuer = issuer
        self.ttl = int(ttl)
        self.reuse = int(reuse)
        self.cache_size = cache_size
        self._keys = tuple(loaded)
        self._key = loaded[0]
        self._headers = {"kid": self._key.kid, "typ": TYP}
        self._clock = clock
        self._cache: OrderedDict[Any, tuple[int, str]] = OrderedDict()  # key -> (iat, token)
        self._lock = threading.Lock()
        self._jti_prefix = secrets.token_hex(6)  # ids made in user space: a random prefix and a counter
        self._jti_seq = itertools.count(1)

    @property
    def kid(self) -> str:
        """The id of the key that signs."""
        return self._key.kid

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as an RFC 7517 JWK Set (signing key first), for ``/.well-known/jwks.json``."""
        return {"keys": [dict(k.jwk) for k in self._keys]}

    def mint(
        self,
        consumer_id: str,
        username: str | None,
        groups: Sequence[str],
        claims: Mapping[str, Any],
        request_id: str | None,
        audience: str,
    ) -> str:
        """A passport for ``audience`` (the service's name): reused from the cache when one was minted for the same
        identity less than ``reuse`` seconds ago, else signed now with ``jti`` = ``request_id``."""
        return self.mint_until(consumer_id, username, groups, claims, request_id, audience)[0]

    def mint_until(
        self,
        consumer_id: str,
        username: str | None,
        groups: Sequence[str],
        claims: Mapping[str, Any],
        request_id: str | None,
        audience: str,
    ) -> tuple[str, float]:
        """``mint``, and until when (epoch seconds) the same passport may be handed out again for this identity: a
        caller that keeps it (plugins.fastpath) asks again only then."""
        now = self._clock()
        ck: Any = None
        if self.reuse:
            ck = (consumer_id, username, tuple(groups), _freeze(claims), audience)
            with self._lock:
                hit = self._cache.get(ck)
                if hit is not None and hit[0] <= now < hit[0] + self.reuse:
                    self._cache.move_to_end(ck)
                    return hit[1], float(hit[0] + self.reuse)
        iat = int(now)
        token = self._sign(consumer_id, username, groups, claims, request_id, audience, iat)
        if self.reuse:
            with self._lock:
                self._cache[ck] = (iat, token)
                self._cache.move_to_end(ck)
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return token, float(iat + self.reuse)

    def _sign(
        self,
        consumer_id: str,
        username: str | None,
        groups: Sequence[str],
        claims: Mapping[str, Any],
        request_id: str | None,
        audience: str,
        iat: int,
    ) -> str:
        if not isinstance(consumer_id, str) or not consumer_id:
            raise ValueError("consumer_id: a non-empty string is required")
        if not isinstance(audience, str) or not audience:
            raise ValueError("audience: a non-empty string is required")
        if isinstance(groups, str):
            raise ValueError("groups: a sequence of names is required, not a string")
        payload: dict[str, Any] = dict(claims) if claims else {}
        if payload and not RESERVED.isdisjoint(payload):
            raise ValueError(f"claims: {sorted(RESERVED.intersection(payload))} are set by the passport itself")
        payload["iss"] = self.issuer
        payload["sub"] = consumer_id
        if username is not None:
            payload["preferred_username"] = username
        payload["groups"] = list(groups)
        payload["aud"] = audience
        payload["iat"] = iat
        payload["exp"] = iat + self.ttl
        payload["jti"] = request_id or f"{self._jti_prefix}-{next(self._jti_seq)}"
        return jwt.encode(payload, self._key.private, algorithm=self._key.algorithm, headers=self._headers)


# ------------------------------------------------------------------------------------------------- verification


@dataclass(slots=True)
class _Fetched:
    keys: dict[str, Mapping[str, Any]]  # kid -> JWK
    fetched: float  # monotonic time of the last good fetch (-inf: never)
    tried: float  # monotonic time of the last attempt
    error: str | None  # why the last attempt failed


def _index(jwks: Any) -> dict[str, Mapping[str, Any]]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise ValueError('not a JWK Set (no "keys" list)')
    return {k["kid"]: k for k in keys if isinstance(k, Mapping) and isinstance(k.get("kid"), str)}


class _RemoteJWKS:
    """JWK Sets fetched by URL: cached ``JWKS_TTL`` s, refetched early (rate-limited) for an unknown kid, and the last
    good copy kept ``JWKS_STALE`` s while the URL fails. Thread-safe; one fetch at a time."""

    def __init__(self) -> None:
        self._sets: dict[str, _Fetched] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._sets.clear()

    def key(self, url: str, kid: str) -> Mapping[str, Any] | None:
        now = time.monotonic()
        entry = self._sets.get(url)
        if entry is None or not self._usable(entry, kid, now):
            with self._lock:
                entry = self._sets.get(url)
                if entry is None or not self._usable(entry, kid, now):
                    entry = self._refresh(url, entry, now)
        if entry.error is not None and now - entry.fetched > JWKS_STALE:
            raise JWKSUnavailable(entry.error)
        return entry.keys.get(kid)

    @staticmethod
    def _usable(entry: _Fetched, kid: str, now: float) -> bool:
        if now - entry.tried < JWKS_REFETCH:
            return True  # tried moments ago: answer from what we hold, do not hammer the URL
        return entry.error is None and now - entry.fetched < JWKS_TTL and kid in entry.keys

    def _refresh(self, url: str, old: _Fetched | None, now: float) -> _Fetched:
        try:
            req = urllib.request.Request(url, headers={"Accept": "application/jwk-set+json, application/json"})
            with urllib.request.urlopen(req, timeout=JWKS_TIMEOUT) as resp:
                body = resp.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError("larger than 1 MiB")
            entry = _Fetched(_index(json.loads(body)), now, now, None)
        except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts and bad JSON are all of these
            keys, fetched = (old.keys, old.fetched) if old else ({}, float("-inf"))
            entry = _Fetched(keys, fetched, now, f"JWKS unavailable from {url}: {exc}")
        self._sets[url] = entry
        return entry


_remote = _RemoteJWKS()
_public_keys: dict[tuple[str, ...], Any] = {}  # (alg, kty, crv, x, y) -> public key object, bounded below


def _public_key(jwk: Mapping[str, Any], alg: str, kid: str) -> Any:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if (kty, crv) != (("OKP", "Ed25519") if alg == "EdDSA" else ("EC", "P-256")):
        raise PassportError(f"key {kid!r} is {kty}/{crv}, which cannot verify {alg}")
    if jwk.get("alg", alg) != alg:
        raise PassportError(f"key {kid!r} is for {jwk.get('alg')}, the passport says {alg}")
    if jwk.get("use", "sig") != "sig":
        raise PassportError(f"key {kid!r} is not a signing key")
    ck = (alg, kty, crv, str(jwk.get("x")), str(jwk.get("y")))
    key = _public_keys.get(ck)
    if key is None:
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        except jwt.PyJWKError as exc:
            raise PassportError(f"key {kid!r} in the JWKS is invalid: {exc}") from None
        if len(_public_keys) >= 256:
            _public_keys.clear()
        _public_keys[ck] = key
    return key


def verify(
    token: str,
    jwks: Mapping[str, Any] | str,
    audience: str,
    issuer: str = "gwanmun",
    leeway: int = 5,
) -> dict[str, Any]:
    """Verify a passport for a Python backend and return its claims.

    ``jwks`` is the gateway's JWK Set as a dict, or its ``http(s)://`` URL (fetched with urllib and cached, see
    ``JWKS_TTL``). Only EdDSA and ES256 are accepted (never ``none`` or an HMAC algorithm keyed by public material),
    ``typ`` must be ``passport+jwt``, ``kid`` must name a key of the set, and ``aud``, ``iss``, ``exp``, ``iat``
    (not in the future), ``sub`` and ``jti`` are checked, with ``leeway`` seconds of clock skew.

    Raises ``PassportError`` (``JWKSUnavailable`` when the URL cannot be fetched).
    """
    if not token or not isinstance(token, str):
        raise PassportError("no passport")
    if len(token) > MAX_TOKEN:
        raise PassportError(f"passport longer than {MAX_TOKEN} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:
        raise PassportError(f"malformed passport: {exc}") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise PassportError(f"algorithm {alg!r} is not allowed (EdDSA or ES256 only)")
    if header.get("typ") != TYP:
        raise PassportError(f"typ {header.get('typ')!r} is not {TYP!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise PassportError("passport has no kid")
    if isinstance(jwks, str):
        if not jwks.startswith(("http://", "https://")):
            raise ValueError(f"jwks: {jwks!r} is neither a JWK Set nor an http(s) URL")
        jwk = _remote.key(jwks, kid)
    else:
        try:
            jwk = _index(jwks).get(kid)
        except ValueError as exc:
            raise ValueError(f"jwks: {exc}") from None
    if jwk is None:
        raise PassportError(f"unknown kid {kid!r} (not in the JWKS: retired, or not from this gateway)")
    key = _public_key(jwk, alg, kid)
    try:
        claims = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer, leeway=leeway,
            options={"require": REQUIRED},
        )
    except jwt.ExpiredSignatureError:
        raise PassportError("passport expired") from None
    except jwt.InvalidAudienceError:
        raise PassportError(f"passport is not for audience {audience!r}") from None
    except jwt.InvalidIssuerError:
        raise PassportError(f"passport is not from issuer {issuer!r}") from None
    except jwt.InvalidSignatureError:
        raise PassportError("bad signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise PassportError(f"passport has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise PassportError(f"invalid passport: {exc}") from None
    if claims["iat"] > time.time() + leeway:  # PyJWT < 2.10 does not check this
        raise PassportError("passport issued in the future (clock skew?)")
    return claims
