"""gwanmun.auth.secrets: password hashes (argon2, bcrypt), API keys, and Basic header parsing."""

from __future__ import annotations

import base64
import hashlib

import bcrypt
import pytest

from gwanmun.auth.secrets import (
    ARGON2,
    BCRYPT,
    DEFAULT_POLICY,
    PasswordPolicy,
    dummy_verify,
    hash_key,
    hash_password,
    key_digest,
    needs_rehash,
    parse_basic,
    password_scheme,
    verify_key,
    verify_password,
)

# cheap parameters: the tests check behaviour, not cost
FAST_ARGON2 = PasswordPolicy(scheme=ARGON2, argon2_time_cost=1, argon2_memory_cost=8, argon2_parallelism=1)
FAST_BCRYPT = PasswordPolicy(scheme=BCRYPT, bcrypt_rounds=4)
POLICIES = [FAST_ARGON2, FAST_BCRYPT]


# --- passwords -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES, ids=["argon2", "bcrypt"])
def test_hash_and_verify(policy):
    for password in ("correct horse", "pässwörd ✓", ":colons:", " spaces ", "x" * 71):
        stored = hash_password(password, policy)
        assert password_scheme(stored) == policy.scheme
        assert verify_password(stored, password)
        assert not verify_password(stored, password + "x")
        assert not verify_password(stored, password.upper() if password != password.upper() else "y")
        assert not verify_password(stored, "")
    assert hash_password("same", policy) != hash_password("same", policy)  # salted


@pytest.mark.parametrize("policy", POLICIES, ids=["argon2", "bcrypt"])
def test_hash_password_refuses(policy):
    for bad in ("", "a\x00b"):
        with pytest.raises(ValueError):
            hash_password(bad, policy)


def test_bcrypt_length_rule():
    with pytest.raises(ValueError):
        hash_password("x" * 73, FAST_BCRYPT)
    with pytest.raises(ValueError):
        hash_password("é" * 37, FAST_BCRYPT)  # 74 bytes
    assert hash_password("x" * 200, FAST_ARGON2)  # argon2 has no such limit
    # a hash made elsewhere (htpasswd, older bcrypt) from a long password: only 72 bytes ever counted
    legacy = bcrypt.hashpw(b"y" * 72, bcrypt.gensalt(4)).decode()
    assert verify_password(legacy, "y" * 72 + "anything")


def test_foreign_and_variant_hashes():
    made = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    for prefix in ("$2a$", "$2b$", "$2y$"):
        assert verify_password(prefix + made[4:], "pw")


@pytest.mark.parametrize("stored", [
    "", "plain", "$argon2id$garbage", "$argon2id$v=19$m=8,t=1,p=1$bad$bad", "$2b$04$short", "$2b$99$" + "a" * 53,
    "$1$md5crypt", "{SHA}abc", "sha256$" + "0" * 64, "$2b$04$" + "é" * 53,
])
def test_verify_never_raises(stored):
    assert verify_password(stored, "pw") is False


def test_needs_rehash():
    a = hash_password("pw", FAST_ARGON2)
    b = hash_password("pw", FAST_BCRYPT)
    assert not needs_rehash(a, FAST_ARGON2)
    assert needs_rehash(a, DEFAULT_POLICY)  # weaker than the default
    assert needs_rehash(a, FAST_BCRYPT)  # other scheme
    assert not needs_rehash(b, FAST_BCRYPT)
    assert needs_rehash(b, PasswordPolicy(scheme=BCRYPT, bcrypt_rounds=5))
    assert not needs_rehash(b, PasswordPolicy(scheme=BCRYPT, bcrypt_rounds=4))
    assert needs_rehash(b, FAST_ARGON2)
    for junk in ("", "plain", "$2b$xx$", "$argon2id$junk"):
        assert needs_rehash(junk, FAST_ARGON2) and needs_rehash(junk, FAST_BCRYPT)


def test_policy_is_validated():
    with pytest.raises(ValueError):
        PasswordPolicy(scheme="md5")
    with pytest.raises(ValueError):
        PasswordPolicy(scheme=BCRYPT, bcrypt_rounds=3)


def test_dummy_verify():
    assert dummy_verify("anything", FAST_ARGON2) is False
    assert dummy_verify("anything", FAST_BCRYPT) is False


# --- API keys --------------------------------------------------------------------------------------------------

def test_hash_key():
    assert hash_key("abc") == "sha256$" + hashlib.sha256(b"abc").hexdigest()
    peppered = hash_key("abc", b"pepper")
    assert peppered.startswith("hmac-sha256$") and len(peppered) == len("hmac-sha256$") + 64
    assert peppered != hash_key("abc", b"other")


@pytest.mark.parametrize("pepper", [None, b"pepper"], ids=["sha256", "hmac"])
def test_verify_key_hashed_and_plain(pepper):
    stored = hash_key("k-123", pepper)
    assert verify_key(stored, "k-123", pepper)
    assert not verify_key(stored, "k-124", pepper)
    assert not verify_key(stored, "", pepper)
    assert not verify_key(stored, stored, pepper)  # presenting the hash is not presenting the key
    assert verify_key("k-123", "k-123", pepper)  # plain stored key (Kong)
    assert not verify_key("k-123", "k-12", pepper)
    assert not verify_key("k-123", "k-1234", pepper)
    assert not verify_key("", "x", pepper)


def test_verify_key_scheme_rules():
    assert not verify_key(hash_key("k", b"p"), "k")  # an HMAC hash without the pepper never matches
    assert not verify_key(hash_key("k", b"p"), "k", b"wrong")
    # only an exact hash form is a hash; anything else is a plain key
    for plain in ("sha256$abc", "sha256$" + "G" * 64, "sha256$" + "A" * 64, "sha256$" + "a" * 63):
        assert verify_key(plain, plain) and not verify_key(plain, "abc")


def test_key_digest_indexes_plain_and_hashed_keys():
    for pepper in (None, b"p"):
        index = {key_digest("plain-key", pepper): "a", key_digest(hash_key("hashed-key", pepper), pepper): "b"}
        assert index.get(hash_key("plain-key", pepper)) == "a"
        assert index.get(hash_key("hashed-key", pepper)) == "b"
        assert index.get(hash_key("nope", pepper)) is None
    with pytest.raises(ValueError):
        key_digest(hash_key("k"), b"p")
    with pytest.raises(ValueError):
        key_digest(hash_key("k", b"p"))


# --- Basic ------------------------------------------------------------------------------------------------------

def basic(raw: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} {base64.b64encode(raw).decode()}"


@pytest.mark.parametrize("value,expected", [
    (basic(b"user:pw"), ("user", "pw")),
    (basic(b"user:pa:ss"), ("user", "pa:ss")),
    (basic(b"user:"), ("user", "")),
    (basic("Jürgen:päss".encode()), ("Jürgen", "päss")),
    (basic(b"user:pw", "basic"), ("user", "pw")),
    (basic(b"user:pw", "BASIC"), ("user", "pw")),
    ("  " + basic(b"user:pw") + "  ", ("user", "pw")),
    ("Basic   " + base64.b64encode(b"user:pw").decode(), ("user", "pw")),
    ("Basic " + base64.b64encode(b"user:pwx").decode().rstrip("="), ("user", "pwx")),  # padding left out
    (basic(b"user:pw").encode(), ("user", "pw")),
], ids=["plain", "colon-in-password", "empty-password", "utf8", "lower", "upper", "spaces", "many-spaces",
        "no-padding", "bytes"])
def test_parse_basic(value, expected):
    assert parse_basic(value) == expected


@pytest.mark.parametrize("value", [
    None, "", "Basic", "Basic ", "Bearer dXNlcjpwdw==", "Basicx dXNlcjpwdw==", basic(b"userpw"), basic(b":pw"),
    "Basic !!!!", "Basic dXNlcjpwdw==!", "Basic dXNl cjpwdw==", "Basic dXNlcjpwdw=====", "Basic d",
    basic(b"\xff\xfe:pw"), basic(b"user:\xc3"), basic(b"us\x00er:pw"), basic(b"user:p\nw"), basic(b"user:pw\x7f"),
    "Basic " + "A" * 10_000, b"Basic dXNlcjpwdw==\xff", "Básic dXNlcjpwdw==",
], ids=["none", "empty", "scheme-only", "scheme-space", "bearer", "other-scheme", "no-colon", "empty-user",
        "bad-chars", "trailing-junk", "inner-space", "excess-padding", "one-char", "bad-utf8", "cut-utf8", "nul",
        "newline", "del", "huge", "non-ascii-bytes", "non-ascii-scheme"])
def test_parse_basic_rejects(value):
    assert parse_basic(value) is None
