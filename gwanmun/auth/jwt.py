"""JWT verification with Kong's jwt-plugin semantics (plus allowed issuers/audiences and leeway), on PyJWT.

``JWTVerifier.verify`` follows Kong's order: key, algorithm, signature, then claims.

1. ``parse_token``: size and ASCII checks; PyJWT splits and decodes the JWS and checks ``kid``'s type and ``crit``'s
   shape. Then: ``alg`` must be one of ``ALGORITHMS`` (``none`` never is); any ``crit`` is refused (we implement no
   JWS extension, and RFC 7515 §4.1.11 says to reject what we do not understand); a ``kid`` must be a printable
   string of at most ``MAX_KID`` characters; the payload must be a JSON object.
2. The key: the value of ``key_claim_name`` (in the claims, else the header, as Kong) is looked up in a dict of
   ``JWTKey``; with a JWKS, the header ``kid`` is. Either value is only ever a dict key, never a path or a query.
   Header fields that point at keys (``jku``, ``jwk``, ``x5u``, ``x5c``) are ignored: a token never picks its key.
3. The token's ``alg`` must equal the key's algorithm. A ``JWTKey`` is bound to one algorithm when it is built, and
   an HMAC key can only be built from a secret that does not look like a key (PyJWT refuses PEM/SSH/JWK secrets), so
   an RSA public key can never serve as an HMAC secret (the HS/RS confusion attack). PyJWT's algorithm object then
   verifies the signature with the key parsed at construction.
4. Claims, only after the signature held: ``claims_to_verify`` (exp, nbf) with ``leeway``, ``maximum_expiration``,
   the allowed ``issuers`` and ``audiences``.

The parse in step 1 does not verify anything: it only chooses the key. Claims reach the caller only from
``Verified``, which is made after step 3 passed.

Every failure raises ``JWTError(code, message)``. The message is Kong's where Kong has one, and never contains the
token, a secret, or a value read from the token, so it is safe to return to the client and to log.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeGuard
from urllib.parse import unquote_plus

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK, PyJWS
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import DecodeError, PyJWTError

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES: Final[dict[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1,
}
ALGORITHMS: Final = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_CURVES) | frozenset({"EdDSA"})
CLAIMS: Final = frozenset({"exp", "nbf"})  # what claims_to_verify may list (Kong's set)

MAX_KID: Final = 256  # characters, for a kid or a key claim value
MAX_TOKEN: Final = 8192  # characters
MIN_RSA_BITS: Final = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey

_ALGS: Final[dict[str, Algorithm]] = {n: a for n, a in get_default_algorithms().items() if n in ALGORITHMS}
_HMAC_MIN: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # bytes: RFC 7518 §3.2, a key as long as the hash
_JWS: Final = PyJWS(options={"verify_signature": False})  # parsing only: JWTVerifier._finish checks signatures
_BEARER: Final = re.compile(r"\s*bearer\s+(\S+)\s*", re.IGNORECASE)


class JWTError(Exception):
    """A token was rejected (or, with code ``invalid_key``, a key at build time).

    ``code`` is a short machine code (the table is in docs/auth.md); ``message`` is safe to show and log.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"JWTError({self.code!r}, {self.message!r})"


def valid_id(value: object) -> bool:
    """A usable key identifier: a non-empty printable string of at most ``MAX_KID`` characters.

    Identifiers are only dict keys, so any such string is harmless; the checks keep control characters and huge
    values out of logs and lookups.
    """
    return isinstance(value, str) and 0 < len(value) <= MAX_KID and value.isprintable()


class JWTKey:
    """A verification key bound to exactly one algorithm: a Kong jwt credential, or one JWK.

    ``key`` is the HMAC secret (str or bytes; base64-decoded first with ``secret_is_base64``) for HS*, and for the
    others a public key: a cryptography object, or PEM (public key or X.509 certificate). Private keys are refused:
    a verifier has no use for one. ``kid`` is the identifier tokens name it by (the credential's ``key`` or the
    JWK's ``kid``). ``weak`` is True for an HMAC secret shorter than its hash or an RSA key under 2048 bits: Kong
    accepts these, so we do too, and the caller may warn.
    """

    __slots__ = ("kid", "algorithm", "weak", "_key", "_alg")

    def __init__(self, algorithm: str, key: str | bytes | PublicKey, *, kid: str = "",
                 secret_is_base64: bool = False) -> None:
        alg = _ALGS.get(algorithm)
        if alg is None:
            raise JWTError("invalid_key", f"unsupported algorithm (expected one of {', '.join(sorted(ALGORITHMS))})")
        if kid and not valid_id(kid):
            raise JWTError("invalid_key", f"kid must be a printable string of at most {MAX_KID} characters")
        self.kid = kid
        self.algorithm = algorithm
        self._alg = alg
        self._key: bytes | PublicKey
        if algorithm in HMAC_ALGORITHMS:
            secret = _hmac_secret(alg, key, secret_is_base64)
            self._key = secret
            self.weak = len(secret) < _HMAC_MIN[algorithm]
        else:
            pub = _public_key(algorithm, alg, key)
            self._key = pub
            self.weak = isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS

    @classmethod
    def from_jwk(cls, jwk: PyJWK | Mapping[str, Any], algorithm: str | None = None) -> JWTKey:
        """A key from a JWK (a ``PyJWK`` or its dict). The algorithm is ``algorithm``, else the JWK's ``alg``, else
        PyJWT's default for the key type (RS256 for RSA, ES256/384/512 by curve, EdDSA for OKP, HS256 for oct)."""
        if not isinstance(jwk, PyJWK):
            try:
                jwk = PyJWK(dict(jwk), algorithm)
            except (PyJWTError, ValueError, TypeError, KeyError):
                raise JWTError("invalid_key", "invalid JWK") from None
        kid = jwk.key_id
        return cls(algorithm or jwk.algorithm_name, jwk.key, kid=kid if isinstance(kid, str) else "")

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """PyJWT's algorithm checks the signature with the prepared key. Any error is a failed check."""
        try:
            return bool(self._alg.verify(signing_input, self._key, signature))
        except Exception:  # noqa: BLE001 - fail closed on anything a malformed signature can raise
            return False

    def __repr__(self) -> str:  # never the secret
        return f"JWTKey({self.algorithm}, kid={self.kid!r})"


def _hmac_secret(alg: Algorithm, secret: object, is_base64: bool) -> bytes:
    if not isinstance(secret, (str, bytes)):
        raise JWTError("invalid_key", "an HMAC secret must be a string")
    raw = secret.encode() if isinstance(secret, str) else secret
    if is_base64:
        # Kong decodes base64url or standard base64, padding optional
        s = raw.strip().replace(b"-", b"+").replace(b"_", b"/")
        try:
            raw = base64.b64decode(s + b"=" * (-len(s) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise JWTError("invalid_key", "secret is not valid base64") from None
    if not raw:
        raise JWTError("invalid_key", "an HMAC secret must not be empty")
    try:
        return bytes(alg.prepare_key(raw))  # refuses a secret that is a PEM/SSH/JWK key: no HS/RS confusion
    except (PyJWTError, ValueError, TypeError):
        raise JWTError("invalid_key", "an HMAC secret must not be a public or private key") from None


def _public_key(name: str, alg: Algorithm, key: object) -> PublicKey:
    obj: object = key
    if isinstance(key, (str, bytes)):
        pem = key.encode() if isinstance(key, str) else key
        try:
            if b"-----BEGIN CERTIFICATE-----" in pem:
                obj = x509.load_pem_x509_certificate(pem.strip()).public_key()
            else:
                obj = alg.prepare_key(pem)
        except (PyJWTError, ValueError, TypeError, UnsupportedAlgorithm):
            raise JWTError("invalid_key", f"not a valid public key for {name}") from None
    if name in RSA_ALGORITHMS:
        ok = isinstance(obj, rsa.RSAPublicKey)
    elif name in EC_CURVES:
        ok = isinstance(obj, ec.EllipticCurvePublicKey) and isinstance(obj.curve, EC_CURVES[name])
    else:
        ok = isinstance(obj, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    if not ok:
        private = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
        if isinstance(obj, private):
            raise JWTError("invalid_key", "a verification key must be a public key, not a private key")
        raise JWTError("invalid_key", f"not a valid public key for {name}")
    return obj  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Unverified:
    """A parsed token whose signature has NOT been checked: use it only to choose the key."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return self.header["alg"]  # type: ignore[no-any-return]  # parse_token checked it is in ALGORITHMS

    @property
    def kid(self) -> str | None:
        return self.header.get("kid")  # parse_token checked it is None or valid_id


@dataclass(frozen=True, slots=True)
class Verified:
    """A token whose signature and claims passed: its claims, header, and the key that verified it."""

    claims: dict[str, Any]
    header: dict[str, Any]
    key: JWTKey


def parse_token(token: str, max_size: int = MAX_TOKEN) -> Unverified:
    """Split and decode a compact JWS with PyJWT and apply the header rules (module docstring, step 1)."""
    if len(token) > max_size:
        raise JWTError("too_large", "Bad token; too large")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise JWTError("malformed", "Bad token; invalid serialization") from None
    try:
        parts = _JWS.decode_complete(raw)
    except DecodeError:
        raise JWTError("malformed", "Bad token; invalid serialization") from None
    except PyJWTError:  # PyJWT's header rules: kid not a string, crit malformed or unsupported
        raise JWTError("bad_header", "Bad token; invalid header") from None
    header: dict[str, Any] = parts["header"]
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise JWTError("bad_alg", "Invalid algorithm")
    if "crit" in header:
        raise JWTError("bad_header", "Bad token; unsupported critical header")
    if "kid" in header and not valid_id(header["kid"]):
        raise JWTError("bad_header", "Bad token; invalid kid")
    try:
        claims = orjson.loads(parts["payload"])
    except orjson.JSONDecodeError:
        raise JWTError("malformed", "Bad token; invalid JSON") from None
    if not isinstance(claims, dict):
        raise JWTError("malformed", "Bad token; claims must be a JSON object")
    return Unverified(header, claims, raw[: raw.rindex(b".")], parts["signature"])


class KeySource(Protocol):
    """Where ``verify_jwks`` finds a key by the header ``kid`` (``jwks.JWKSClient`` is one)."""

    async def get_key(self, kid: str | None, alg: str | None = None) -> JWTKey | None: ...


def _number(v: object) -> TypeGuard[float]:
    return (type(v) is int or type(v) is float) and math.isfinite(v)  # not bool


class JWTVerifier:
    """Checks tokens against one plugin instance's settings. Built once per config; cheap per call.

    - ``claims_to_verify``: a subset of {"exp", "nbf"} (Kong): each listed claim is required, numeric, and checked
      against the clock. As in Kong, a claim not listed is not checked even when present.
    - ``maximum_expiration``: seconds; when > 0, ``exp`` is required and ``exp - now`` must be at most this.
    - ``key_claim_name``: the claim (or header field) naming the credential, ``iss`` by default (Kong).
    - ``issuers`` / ``audiences``: when non-empty, ``iss`` must be one of them / ``aud`` (a string or a list of
      strings) must contain one of them. Empty means not checked (Kong does not check either).
    - ``leeway``: seconds of clock skew allowed on exp, nbf and maximum_expiration.
    - ``cache_size``: how many tokens whose signature verified are remembered with their key, so a client that sends
      the same token again costs a dict lookup instead of a parse and a signature check (RS256: ~50 us -> ~2 us).
      A hit needs the same token string and the very same ``JWTKey`` object (a rotated key is a new object);
      claims are checked on every call. Only tokens that verified are stored, so invalid tokens cannot fill it.
      0 disables it.

    The ``claims`` and ``header`` dicts of a ``Verified`` may be shared between calls: treat them as read-only.
    """

    __slots__ = ("claims_to_verify", "maximum_expiration", "key_claim_name", "issuers", "audiences", "leeway",
                 "max_token_size", "cache_size", "clock", "_exp", "_nbf", "_cache")

    def __init__(self, *, claims_to_verify: Iterable[str] = (), maximum_expiration: float = 0,
                 key_claim_name: str = "iss", issuers: Iterable[str] = (), audiences: Iterable[str] = (),
                 leeway: float = 0, max_token_size: int = MAX_TOKEN, cache_size: int = 1024,
                 clock: Callable[[], float] = time.time) -> None:
        claims = frozenset(claims_to_verify)
        if not claims <= CLAIMS:
            raise ValueError(f"claims_to_verify: expected a subset of {sorted(CLAIMS)}")
        if maximum_expiration < 0 or leeway < 0 or max_token_size <= 0 or cache_size < 0:
            raise ValueError("maximum_expiration, leeway and cache_size must be >= 0, max_token_size > 0")
        if not valid_id(key_claim_name):
            raise ValueError("key_claim_name must be a non-empty printable string")
        self.claims_to_verify = claims
        self.maximum_expiration = maximum_expiration
        self.key_claim_name = key_claim_name
        self.issuers = frozenset(issuers)
        self.audiences = frozenset(audiences)
        self.leeway = leeway
        self.max_token_size = max_token_size
        self.cache_size = cache_size
        self.clock = clock
        self._exp = "exp" in claims or maximum_expiration > 0
        self._nbf = "nbf" in claims
        self._cache: dict[str, tuple[Unverified, JWTKey]] = {}

    def parse(self, token: str) -> Unverified:
        return parse_token(token, self.max_token_size)

    def verify(self, token: str, keys: Mapping[str, JWTKey]) -> Verified:
        """Kong's flow: the key is ``keys[value of key_claim_name]`` (claims first, then the header)."""
        u, cached = self._parse(token)
        name = self.key_claim_name
        value = u.claims.get(name)
        if value is None:
            value = u.header.get(name)
        if value is None:
            raise JWTError("no_key_claim", f"No mandatory '{name}' in claims")
        if not valid_id(value):
            raise JWTError("bad_kid", f"Invalid '{name}'")
        key = keys.get(value)
        if key is None:
            raise JWTError("unknown_key", f"No credentials found for given '{name}'")
        return self._finish(token, u, cached, key)

    async def verify_jwks(self, token: str, source: KeySource) -> Verified:
        """The key is the JWKS key with the header's ``kid`` (and ``alg``); see ``jwks.JWKSClient.get_key``."""
        u, cached = self._parse(token)
        key = await source.get_key(u.kid, u.alg)
        if key is None:
            raise JWTError("unknown_key", "No credentials found for given 'kid'")
        return self._finish(token, u, cached, key)

    def verify_with(self, token: str, key: JWTKey) -> Verified:
        """Check ``token`` against a key the caller chose: algorithm, signature, then claims."""
        u, cached = self._parse(token)
        return self._finish(token, u, cached, key)

    def _parse(self, token: str) -> tuple[Unverified, JWTKey | None]:
        hit = self._cache.get(token)
        if hit is not None:
            return hit
        return parse_token(token, self.max_token_size), None

    def _finish(self, token: str, u: Unverified, cached: JWTKey | None, key: JWTKey) -> Verified:
        if key is not cached:
            if u.header["alg"] != key.algorithm:
                raise JWTError("bad_alg", "Invalid algorithm")
            if not key.verify(u.signing_input, u.signature):
                raise JWTError("bad_signature", "Invalid signature")
            if self.cache_size:
                cache = self._cache
                if token not in cache and len(cache) >= self.cache_size:
                    del cache[next(iter(cache))]  # oldest first
                cache[token] = (u, key)
        self._check_claims(u.claims)
        return Verified(u.claims, u.header, key)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now = self.clock()
        leeway = self.leeway
        if self._exp:
            exp = claims.get("exp")
            if not _number(exp):
                raise JWTError("exp_invalid", "exp must be a number")
            if exp <= now - leeway:
                raise JWTError("expired", "token expired")
            if self.maximum_expiration > 0 and exp - now > self.maximum_expiration + leeway:
                raise JWTError("exp_too_far", "exp exceeds maximum allowed expiration")
        if self._nbf:
            nbf = claims.get("nbf")
            if not _number(nbf):
                raise JWTError("nbf_invalid", "nbf must be a number")
            if nbf > now + leeway:
                raise JWTError("not_yet_valid", "token not valid yet")
        if self.issuers:
            iss = claims.get("iss")
            if not isinstance(iss, str) or iss not in self.issuers:
                raise JWTError("bad_iss", "Invalid issuer")
        if self.audiences:
            aud = claims.get("aud")
            if isinstance(aud, str):
                ok = aud in self.audiences
            elif isinstance(aud, list):
                ok = any(isinstance(a, str) and a in self.audiences for a in aud)
            else:
                ok = False
            if not ok:
                raise JWTError("bad_aud", "Invalid audience")


@dataclass(frozen=True, slots=True)
class Found:
    """A token found in a request: ``source`` is "query", "cookie" or "header"; ``name`` is the parameter, cookie
    or header name it was found under."""

    token: str
    source: str
    name: str


def _text(v: str | bytes) -> str:
    return v.decode("latin-1") if isinstance(v, bytes) else v


def _add(first: Found | None, token: str, source: str, name: str) -> Found:
    if first is None:
        return Found(token, source, name)
    if first.token != token:
        raise JWTError("multiple_tokens", "Multiple tokens provided")
    return first


class TokenLocator:
    """Finds the token as Kong's jwt plugin does: in the query parameters ``uri_param_names``, then the cookies
    ``cookie_names``, then the headers ``header_names`` (as ``Bearer <token>``; other values are ignored).

    The same token in several places is one token (the first place is reported); two different tokens raise
    ``JWTError("multiple_tokens")``. No token gives None.
    """

    __slots__ = ("uri_param_names", "cookie_names", "header_names")

    def __init__(self, uri_param_names: Iterable[str] = ("jwt",), cookie_names: Iterable[str] = (),
                 header_names: Iterable[str] = ("authorization",)) -> None:
        self.uri_param_names = frozenset(uri_param_names)
        self.cookie_names = frozenset(cookie_names)
        self.header_names = tuple(dict.fromkeys(n.lower() for n in header_names))

    def find(self, query: str | bytes = "", headers: Mapping[str, str | bytes] | None = None) -> Found | None:
        """``query``: the raw query string (no ``?``). ``headers``: lower-case name -> value (the first value when a
        header is repeated); cookies are read from its ``cookie`` entry."""
        first: Found | None = None
        if query and self.uri_param_names:
            for pair in _text(query).split("&"):
                k, _, v = pair.partition("=")
                if "%" in k or "+" in k:
                    k = unquote_plus(k)
                if k in self.uri_param_names:
                    if "%" in v or "+" in v:
                        v = unquote_plus(v)
                    if v:
                        first = _add(first, v, "query", k)
        if not headers:
            return first
        if self.cookie_names:
            raw = headers.get("cookie")
            if raw:
                seen: set[str] = set()
                for part in _text(raw).split(";"):
                    k, eq, v = part.partition("=")
                    k = k.strip()
                    if eq and k in self.cookie_names and k not in seen:  # the first cookie of a name, as nginx
                        seen.add(k)
                        v = v.strip()
                        if v:
                            first = _add(first, v, "cookie", k)
        for name in self.header_names:
            raw = headers.get(name)
            if raw:
                m = _BEARER.fullmatch(_text(raw))
                if m:
                    first = _add(first, m.group(1), "header", name)
        return first
