"""Credential storage and comparison: passwords (argon2id, bcrypt), API keys (SHA-256), Basic header parsing.

Passwords are low-entropy, so they are stored with a slow, salted hash: argon2id (the default, RFC 9106) or bcrypt.
The scheme is read from the stored hash, so both kinds (and hashes made by other tools, e.g. htpasswd's bcrypt)
verify. Verifying costs tens of milliseconds of CPU by design; callers on the event loop should run it in a thread
(argon2-cffi and bcrypt release the GIL) and cache successes.

API keys are generated with at least 128 random bits, so no one can guess or brute-force them even against a fast
hash: SHA-256 is enough and costs about a microsecond, where a password hash on every request would cost
milliseconds. With a ``pepper`` (a server-side secret kept out of the credential store), ``hmac-sha256`` also
protects user-chosen, low-entropy keys from offline guessing if only the store leaks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import argon2
import bcrypt
from argon2.exceptions import InvalidHashError, VerificationError

ARGON2: Final = "argon2"
BCRYPT: Final = "bcrypt"
SHA256_PREFIX: Final = "sha256$"
HMAC_PREFIX: Final = "hmac-sha256$"
BCRYPT_MAX: Final = 72  # bytes bcrypt reads from a password
MAX_BASIC: Final = 8192  # characters of an Authorization header we decode

_ARGON2_PREFIXES: Final = ("$argon2id$", "$argon2i$", "$argon2d$")
_BCRYPT_PREFIXES: Final = ("$2a$", "$2b$", "$2y$")
_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """How new password hashes are made, and what ``needs_rehash`` compares against.

    The argon2 defaults are argon2-cffi's (RFC 9106's second recommendation: t=3, 64 MiB, p=4); bcrypt's cost 12 is
    bcrypt's default. Lower them only for tests.
    """

    scheme: str = ARGON2
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536  # KiB
    argon2_parallelism: int = 4
    bcrypt_rounds: int = 12

    def __post_init__(self) -> None:
        if self.scheme not in (ARGON2, BCRYPT):
            raise ValueError(f"password scheme must be {ARGON2!r} or {BCRYPT!r}")
        if not 4 <= self.bcrypt_rounds <= 31:
            raise ValueError("bcrypt_rounds must be in 4..31")


DEFAULT_POLICY: Final = PasswordPolicy()


@lru_cache(maxsize=16)
def _argon2(time_cost: int, memory_cost: int, parallelism: int) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


def _hasher(policy: PasswordPolicy) -> argon2.PasswordHasher:
    return _argon2(policy.argon2_time_cost, policy.argon2_memory_cost, policy.argon2_parallelism)


def password_scheme(stored: str) -> str | None:
    """``"argon2"``, ``"bcrypt"``, or None for anything else (checking credentials at config load)."""
    if stored.startswith(_ARGON2_PREFIXES):
        return ARGON2
    if stored.startswith(_BCRYPT_PREFIXES):
        return BCRYPT
    return None


def hash_password(password: str, policy: PasswordPolicy = DEFAULT_POLICY) -> str:
    """A salted hash of ``password`` in ``policy.scheme``.

    Refused (ValueError): an empty password, a NUL character (C implementations stop at it), and for bcrypt more than
    72 UTF-8 bytes, which bcrypt would silently ignore.
    """
    if not password:
        raise ValueError("password must not be empty")
    if "\x00" in password:
        raise ValueError("password must not contain NUL")
    if policy.scheme == ARGON2:
        return _hasher(policy).hash(password)
    raw = password.encode()
    if len(raw) > BCRYPT_MAX:
        raise ValueError(f"bcrypt reads at most {BCRYPT_MAX} bytes of a password")
    return bcrypt.hashpw(raw, bcrypt.gensalt(policy.bcrypt_rounds)).decode("ascii")


def verify_password(stored: str, password: str) -> bool:
    """True if ``password`` matches ``stored`` (argon2 or bcrypt, detected from the hash). Never raises: a malformed
    or unknown hash is False. The comparison is the library's own, constant-time.

    A bcrypt hash is checked against the first 72 bytes of the password, as every bcrypt implementation reads them,
    so hashes made elsewhere keep working.
    """
    scheme = password_scheme(stored)
    try:
        if scheme == ARGON2:
            return _hasher(DEFAULT_POLICY).verify(stored, password)  # parameters are read from the hash
        if scheme == BCRYPT:
            return bcrypt.checkpw(password.encode()[:BCRYPT_MAX], stored.encode("ascii"))
    except (VerificationError, InvalidHashError, ValueError, UnicodeEncodeError):
        return False
    return False


_dummy: dict[PasswordPolicy, str] = {}


def dummy_verify(password: str, policy: PasswordPolicy = DEFAULT_POLICY) -> bool:
    """Spend what a real ``verify_password`` would, for an unknown user, so response time does not tell which user
    names exist. Always False."""
    stored = _dummy.get(policy)
    if stored is None:
        stored = _dummy[policy] = hash_password("dummy password", policy)
    verify_password(stored, password)
    return False


def needs_rehash(stored: str, policy: PasswordPolicy = DEFAULT_POLICY) -> bool:
    """True if ``stored`` is not a ``policy.scheme`` hash with at least the policy's cost (rehash on next login)."""
    scheme = password_scheme(stored)
    if scheme != policy.scheme:
        return True
    if scheme == ARGON2:
        try:
            return _hasher(policy).check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return True
    try:
        return int(stored[4:6]) < policy.bcrypt_rounds or stored[6] != "$"
    except (ValueError, IndexError):
        return True


def hash_key(key: str, pepper: bytes | None = None) -> str:
    """The stored form of an API key: ``sha256$<hex>``, or ``hmac-sha256$<hex>`` keyed with ``pepper``."""
    raw = key.encode()
    if pepper:
        return HMAC_PREFIX + hmac.new(pepper, raw, hashlib.sha256).hexdigest()
    return SHA256_PREFIX + hashlib.sha256(raw).hexdigest()


def _hashed(stored: str) -> str | None:
    """The prefix of a stored key that is a well-formed hash, else None (a plain key)."""
    for prefix in (SHA256_PREFIX, HMAC_PREFIX):
        if stored.startswith(prefix):
            digest = stored[len(prefix):]
            if len(digest) == 64 and _HEX.issuperset(digest):
                return prefix
    return None


def verify_key(stored: str, presented: str, pepper: bytes | None = None) -> bool:
    """Constant-time check of a presented API key against a stored one, hashed (``hash_key``) or plain (Kong keeps
    plain keys). A stored value of exactly ``sha256$`` or ``hmac-sha256$`` and 64 lower-case hex digits is a hash;
    anything else is a plain key. An ``hmac-sha256`` hash without the pepper never matches.

    Plain keys are compared as SHA-256 digests, so the time does not depend on where they differ or on their length.
    """
    prefix = _hashed(stored)
    if prefix == HMAC_PREFIX and not pepper:
        return False
    if prefix is None:
        a, b = hashlib.sha256(stored.encode()).digest(), hashlib.sha256(presented.encode()).digest()
        return hmac.compare_digest(a, b)
    want = hash_key(presented, pepper if prefix == HMAC_PREFIX else None)
    return hmac.compare_digest(want.encode(), stored.encode())


def key_digest(stored: str, pepper: bytes | None = None) -> str:
    """The index entry of a stored key, so key-auth finds a credential with one dict lookup on ``hash_key(presented,
    pepper)``: a hash in the pepper's scheme is returned as is, a plain key is hashed. The lookup is on a digest, so
    its timing says nothing useful about the stored keys.

    ValueError for a hash in the other scheme (a ``sha256$`` hash with a pepper set, or the reverse): it could never
    match, which is a configuration mistake.
    """
    prefix = _hashed(stored)
    if prefix is None:
        return hash_key(stored, pepper)
    if (prefix == HMAC_PREFIX) != bool(pepper):
        raise ValueError("stored key hash does not match the pepper setting")
    return stored


def _ctl(s: str) -> bool:
    return any(c < " " or c == "\x7f" for c in s)


def parse_basic(value: str | bytes | None) -> tuple[str, str] | None:
    """``Basic <base64(user:password)>`` -> ``(user, password)``, or None for anything malformed.

    The scheme is case-insensitive; base64 must be valid (missing padding is tolerated); the decoded text must be
    UTF-8 (RFC 7617) with a ``:``, a non-empty user (Kong), and no control characters (RFC 7617 §2). The password
    may contain ``:`` and may be empty.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > MAX_BASIC:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "basic" or not token or " " in token:
        return None
    data = token.rstrip("=")
    if len(token) - len(data) > 2:
        return None
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or _ctl(user) or _ctl(password):
        return None
    return user, password
