"""gwanmun.auth.jwt: every algorithm with real keys, Kong's claim rules, and the attacks a verifier must refuse."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import time

import jwt as pyjwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from gwanmun.auth.jwt import (
    MAX_KID,
    Found,
    JWTError,
    JWTKey,
    JWTVerifier,
    TokenLocator,
    parse_token,
    valid_id,
)

NOW = 1_700_000_000.0
SECRET = "s3cr3t-" + "x" * 60  # 67 bytes: long enough for HS512


def clock() -> float:
    return NOW


def pem_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def pem_private(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "rsa": rsa_key,
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "p521": ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }


ALG_KEYS = [
    ("HS256", None), ("HS384", None), ("HS512", None),
    ("RS256", "rsa"), ("RS384", "rsa"), ("RS512", "rsa"),
    ("PS256", "rsa"), ("PS384", "rsa"), ("PS512", "rsa"),
    ("ES256", "p256"), ("ES384", "p384"), ("ES512", "p521"),
    ("EdDSA", "ed25519"),
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict, claims: dict, secret: bytes | None = None, signature: bytes = b"") -> str:
    """A token built by hand, for what PyJWT refuses to produce (alg none, a PEM as HMAC secret, bad headers)."""
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    if secret is not None:
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def hs(claims: dict, secret: str = SECRET, headers: dict | None = None, alg: str = "HS256") -> str:
    return pyjwt.encode(claims, secret, algorithm=alg, headers=headers)


def key_for(alg: str, name: str | None, keys, kid: str = "me") -> tuple[JWTKey, object]:
    if name is None:
        return JWTKey(alg, SECRET, kid=kid), SECRET
    private = keys[name]
    return JWTKey(alg, pem_public(private), kid=kid), private


def code(excinfo: pytest.ExceptionInfo[JWTError]) -> str:
    return excinfo.value.code


# --- algorithms ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg,name", ALG_KEYS, ids=[a for a, _ in ALG_KEYS])
def test_each_algorithm_verifies(keys, alg, name):
    key, signer = key_for(alg, name, keys)
    token = pyjwt.encode({"iss": "me", "sub": "u1"}, signer, algorithm=alg)
    v = JWTVerifier(clock=clock)
    got = v.verify(token, {"me": key})
    assert got.claims["sub"] == "u1" and got.key is key and got.header["alg"] == alg
    assert not key.weak


@pytest.mark.parametrize("alg,name", [a for a in ALG_KEYS if a[1]], ids=[a for a, n in ALG_KEYS if n])
def test_each_algorithm_rejects_a_tampered_payload(keys, alg, name):
    key, signer = key_for(alg, name, keys)
    token = pyjwt.encode({"iss": "me", "admin": False}, signer, algorithm=alg)
    h, _, s = token.split(".")
    forged = h + "." + b64(json.dumps({"iss": "me", "admin": True}).encode()) + "." + s
    with pytest.raises(JWTError) as e:
        JWTVerifier(clock=clock).verify(forged, {"me": key})
    assert code(e) == "bad_signature"


def test_key_from_object_and_certificate(keys):
    private = keys["rsa"]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(private.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2040, 1, 1)).sign(private, hashes.SHA256()))
    token = pyjwt.encode({"iss": "me"}, private, algorithm="RS256")
    v = JWTVerifier(clock=clock)
    for material in (private.public_key(), cert.public_bytes(serialization.Encoding.PEM).decode(),
                     pem_public(private).encode()):
        assert v.verify(token, {"me": JWTKey("RS256", material, kid="me")}).claims == {"iss": "me"}


def test_wrong_key_is_bad_signature(keys):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode({"iss": "me"}, other, algorithm="RS256")
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("RS256", pem_public(keys["rsa"]))})
    assert code(e) == "bad_signature"


def test_truncated_or_garbage_signature(keys):
    key = JWTKey("ES256", pem_public(keys["p256"]))
    token = pyjwt.encode({"iss": "me"}, keys["p256"], algorithm="ES256")
    h, p, _ = token.split(".")
    for sig in (b"", b"\x00" * 10, b"\xff" * 64, b"\x01" * 200):
        with pytest.raises(JWTError) as e:
            JWTVerifier().verify(f"{h}.{p}.{b64(sig)}", {"me": key})
        assert code(e) == "bad_signature"


# --- algorithm attacks -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "", None, ["HS256"], "HS1", "ES256K"])
def test_alg_none_and_unknown_are_rejected(alg):
    token = craft({"alg": alg, "typ": "JWT"}, {"iss": "me"})
    key = JWTKey("HS256", SECRET)
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": key})
    assert code(e) == "bad_alg"


def test_alg_none_from_pyjwt_is_rejected():
    token = pyjwt.encode({"iss": "me"}, None, algorithm="none")
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) == "bad_alg"


def test_hs_rs_confusion_is_rejected(keys):
    """The classic attack: sign HS256 with the RSA public key (which is public) as the HMAC secret."""
    public_pem = pem_public(keys["rsa"])
    rs_key = JWTKey("RS256", public_pem)
    for secret in (public_pem.encode(), public_pem.strip().encode()):
        forged = craft({"alg": "HS256", "typ": "JWT"}, {"iss": "me", "admin": True}, secret=secret)
        with pytest.raises(JWTError) as e:
            JWTVerifier().verify(forged, {"me": rs_key})
        assert code(e) == "bad_alg"
    # and an HMAC key can never be built from a public key, so no configuration can make the attack work
    for material in (public_pem, public_pem.encode(), "  " + public_pem):
        with pytest.raises(JWTError) as e:
            JWTKey("HS256", material)
        assert code(e) == "invalid_key"


def test_alg_must_match_the_key_even_within_a_family(keys):
    token = pyjwt.encode({"iss": "me"}, keys["rsa"], algorithm="PS256")
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("RS256", pem_public(keys["rsa"]))})
    assert code(e) == "bad_alg"
    token = hs({"iss": "me"}, alg="HS512")
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) == "bad_alg"


# --- headers: crit, kid ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("crit", [["exp"], ["b64"], ["http://example.com/ext"], [], "exp", [1]],
                         ids=["exp", "b64", "uri", "empty", "string", "int"])
def test_crit_is_rejected(crit):
    secret = SECRET.encode()
    token = craft({"alg": "HS256", "crit": crit, "exp": 1}, {"iss": "me"}, secret=secret)
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) in ("bad_header", "malformed")


def test_b64_false_is_rejected():
    token = craft({"alg": "HS256", "b64": False, "crit": ["b64"]}, {}, secret=SECRET.encode())
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) in ("bad_header", "malformed")


class Recording(dict):
    """A key map that records every lookup, to show a kid is only ever a dict key."""

    def __init__(self, *a):
        super().__init__(*a)
        self.asked: list = []

    def get(self, k, default=None):
        self.asked.append(k)
        return super().get(k, default)


INJECTIONS = ["../../etc/passwd", "/etc/passwd", "' OR '1'='1' --", "1; DROP TABLE keys", "${jndi:ldap://x}",
              "%2e%2e%2f", "me\\..\\..", "*"]


@pytest.mark.parametrize("kid", INJECTIONS)
def test_kid_injection_is_only_a_lookup(kid):
    keys = Recording({"me": JWTKey("HS256", SECRET, kid="me")})
    token = hs({"sub": "x"}, headers={"kid": kid})
    with pytest.raises(JWTError) as e:
        JWTVerifier(key_claim_name="kid").verify(token, keys)
    assert code(e) == "unknown_key"
    assert keys.asked == [kid]
    assert kid not in str(e.value)


@pytest.mark.parametrize("kid,expected", [
    ("a" * (MAX_KID + 1), "bad_header"), ("x" * 100_000, "too_large"), ("a\nb", "bad_header"),
    ("a\x00", "bad_header"), ("", "bad_header"), (123, "bad_header"), (None, "bad_header"), (["me"], "bad_header"),
    ({"$ne": None}, "bad_header"),
], ids=["overlong", "huge", "newline", "nul", "empty", "int", "null", "list", "object"])
def test_bad_kid_is_rejected(kid, expected):
    keys = Recording({"me": JWTKey("HS256", SECRET)})
    token = craft({"alg": "HS256", "kid": kid}, {"iss": "me"}, secret=SECRET.encode())
    with pytest.raises(JWTError) as e:
        JWTVerifier(key_claim_name="kid").verify(token, keys)
    assert code(e) == expected
    assert keys.asked == []


@pytest.mark.parametrize("iss", ["a" * (MAX_KID + 1), 42, ["me"], {"k": 1}, "me\r\nX-Injected: 1", True])
def test_bad_key_claim_is_rejected(iss):
    keys = Recording({"me": JWTKey("HS256", SECRET)})
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(craft({"alg": "HS256"}, {"iss": iss}, secret=SECRET.encode()), keys)
    assert code(e) == "bad_kid" and keys.asked == []


def test_key_claim_rules():
    key = JWTKey("HS256", SECRET)
    v = JWTVerifier()
    with pytest.raises(JWTError) as e:
        v.verify(hs({"sub": "x"}), {"me": key})
    assert code(e) == "no_key_claim" and e.value.message == "No mandatory 'iss' in claims"
    with pytest.raises(JWTError) as e:
        v.verify(hs({"iss": "other"}), {"me": key})
    assert code(e) == "unknown_key" and e.value.message == "No credentials found for given 'iss'"
    # Kong reads the claim first, then the header
    assert JWTVerifier(key_claim_name="kid").verify(hs({}, headers={"kid": "me"}), {"me": key})
    assert JWTVerifier(key_claim_name="key").verify(hs({"key": "me"}), {"me": key})


# --- claims ----------------------------------------------------------------------------------------------------

def verify_claims(claims: dict, **kw):
    return JWTVerifier(clock=clock, **kw).verify(hs({"iss": "me", **claims}), {"me": JWTKey("HS256", SECRET)})


def reject(claims: dict, **kw) -> str:
    with pytest.raises(JWTError) as e:
        verify_claims(claims, **kw)
    return code(e)


def test_exp():
    v = {"claims_to_verify": ["exp"]}
    assert verify_claims({"exp": NOW + 10}, **v)
    assert verify_claims({"exp": NOW + 0.5}, **v)
    assert reject({"exp": NOW}, **v) == "expired"
    assert reject({"exp": NOW - 100}, **v) == "expired"
    assert reject({}, **v) == "exp_invalid"
    for bad in ("9999999999", True, None, [1], {"n": 1}):
        assert reject({"exp": bad}, **v) == "exp_invalid"
    for bad in (float("inf"), float("nan")):  # not JSON: orjson refuses Infinity and NaN
        assert reject({"exp": bad}, **v) == "malformed"


def test_exp_not_listed_is_not_checked_as_kong():
    assert verify_claims({"exp": NOW - 100})
    assert verify_claims({"exp": "garbage"})


def test_nbf():
    v = {"claims_to_verify": ["nbf"]}
    assert verify_claims({"nbf": NOW}, **v)
    assert verify_claims({"nbf": NOW - 10}, **v)
    assert reject({"nbf": NOW + 1}, **v) == "not_yet_valid"
    assert reject({}, **v) == "nbf_invalid"
    assert reject({"nbf": "0"}, **v) == "nbf_invalid"


def test_leeway():
    v = {"claims_to_verify": ["exp", "nbf"], "leeway": 30}
    assert verify_claims({"exp": NOW - 29, "nbf": NOW + 29}, **v)
    assert reject({"exp": NOW - 31, "nbf": NOW}, **v) == "expired"
    assert reject({"exp": NOW + 10, "nbf": NOW + 31}, **v) == "not_yet_valid"


def test_maximum_expiration():
    v = {"maximum_expiration": 3600}
    assert verify_claims({"exp": NOW + 3600}, **v)
    assert reject({"exp": NOW + 3601}, **v) == "exp_too_far"
    assert reject({}, **v) == "exp_invalid"  # exp becomes required
    assert reject({"exp": NOW - 1}, **v) == "expired"  # and is checked
    assert verify_claims({"exp": NOW + 3610}, leeway=10, **v)


def test_issuers_and_audiences():
    v = {"issuers": ["me", "idp"], "audiences": ["api", "web"]}
    assert verify_claims({"aud": "api"}, **v)
    assert verify_claims({"aud": ["other", "web"]}, **v)
    assert reject({"aud": "other"}, **v) == "bad_aud"
    assert reject({"aud": ["x", 1]}, **v) == "bad_aud"
    assert reject({"aud": []}, **v) == "bad_aud"
    assert reject({"aud": {"api": 1}}, **v) == "bad_aud"
    assert reject({}, **v) == "bad_aud"
    assert reject({"aud": "api"}, issuers=["idp"], audiences=["api"]) == "bad_iss"
    assert verify_claims({"aud": "anything"})  # unset lists check nothing (Kong)


def test_claims_are_checked_only_after_the_signature():
    token = hs({"iss": "me", "exp": NOW - 100}, secret="wrong-" + SECRET)
    with pytest.raises(JWTError) as e:
        JWTVerifier(claims_to_verify=["exp"], clock=clock).verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) == "bad_signature"


def test_verifier_config_is_validated():
    for kw in ({"claims_to_verify": ["iat"]}, {"maximum_expiration": -1}, {"leeway": -1}, {"key_claim_name": ""},
               {"cache_size": -1}):
        with pytest.raises(ValueError):
            JWTVerifier(**kw)


# --- malformed tokens ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token,expected", [
    ("", "malformed"), ("abc", "malformed"), ("a.b", "malformed"), ("a.b.c.d", "malformed"),
    ("!!.!!.!!", "malformed"), ("é.é.é", "malformed"),
    (b64(b"[1]") + "." + b64(b"{}") + ".", "malformed"),
    (b64(b'{"alg":"HS256"}') + "." + b64(b"[1,2]") + ".", "malformed"),
    (b64(b'{"alg":"HS256"}') + "." + b64(b"not json") + ".", "malformed"),
    ("a" * 9000, "too_large"),
], ids=["empty", "one", "two", "four", "junk", "unicode", "header-list", "claims-list", "claims-junk", "large"])
def test_malformed(token, expected):
    with pytest.raises(JWTError) as e:
        JWTVerifier().verify(token, {"me": JWTKey("HS256", SECRET)})
    assert code(e) == expected


def test_parse_token_is_unverified_data():
    u = parse_token(hs({"iss": "me"}, headers={"kid": "k1"}))
    assert u.alg == "HS256" and u.kid == "k1" and u.claims == {"iss": "me"}


def test_errors_never_leak_the_token_or_secret(keys):
    secret = "TOPSECRET-" + "z" * 40
    key = JWTKey("HS256", secret)
    tokens = [hs({"iss": "me", "exp": 1}, secret=secret), hs({"iss": "me"}, secret="nope" * 10),
              hs({"iss": "evil\n<script>"}, secret=secret), craft({"alg": "none"}, {"iss": "me"}),
              hs({"iss": "me", "aud": "zzz"}, secret=secret)]
    for token in tokens:
        with pytest.raises(JWTError) as e:
            JWTVerifier(claims_to_verify=["exp"], audiences=["api"]).verify(token, {"me": key})
        for text in (str(e.value), repr(e.value), e.value.message):
            assert secret not in text and token not in text and "script" not in text
    assert secret not in repr(key)


# --- keys ------------------------------------------------------------------------------------------------------

def test_key_construction_errors(keys):
    bad = [
        ("none", SECRET), ("HS1", SECRET), ("HS256", ""), ("HS256", b""), ("HS256", 123),
        ("RS256", pem_private(keys["rsa"])), ("RS256", keys["rsa"]), ("RS256", "not a pem"),
        ("RS256", pem_public(keys["p256"])), ("ES256", pem_public(keys["p384"])),
        ("ES384", keys["p256"].public_key()), ("ES256", pem_public(keys["rsa"])), ("EdDSA", pem_public(keys["rsa"])),
        ("PS256", keys["ed25519"].public_key()),
    ]
    for alg, material in bad:
        with pytest.raises(JWTError) as e:
            JWTKey(alg, material)
        assert e.value.code == "invalid_key", (alg, material)
    with pytest.raises(JWTError):
        JWTKey("HS256", SECRET, kid="x" * (MAX_KID + 1))


def test_private_key_message(keys):
    with pytest.raises(JWTError) as e:
        JWTKey("RS256", pem_private(keys["rsa"]))
    assert "private" in e.value.message and "PRIVATE" not in e.value.message


def test_secret_is_base64():
    raw = bytes(range(64))
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
        key = JWTKey("HS512", encoded, secret_is_base64=True)
        token = pyjwt.encode({"iss": "me"}, raw, algorithm="HS512")
        assert JWTVerifier().verify(token, {"me": key})
    with pytest.raises(JWTError) as e:
        JWTKey("HS256", "not base64!!", secret_is_base64=True)
    assert e.value.code == "invalid_key"


def test_weak_keys_are_flagged():
    assert JWTKey("HS256", "short").weak
    assert JWTKey("HS512", "k" * 32).weak  # Kong's default 32-character secret is short for HS512
    assert not JWTKey("HS256", "k" * 32).weak
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert JWTKey("RS256", small.public_key()).weak


def test_from_jwk(keys):
    jwk = pyjwt.algorithms.ECAlgorithm.to_jwk(keys["p256"].public_key(), as_dict=True)
    key = JWTKey.from_jwk({**jwk, "kid": "k1"})
    assert (key.algorithm, key.kid) == ("ES256", "k1")
    token = pyjwt.encode({"sub": "x"}, keys["p256"], algorithm="ES256", headers={"kid": "k1"})
    assert JWTVerifier().verify_with(token, key).claims == {"sub": "x"}
    key = JWTKey.from_jwk(pyjwt.PyJWK({**jwk, "alg": "ES256"}))
    assert key.algorithm == "ES256" and key.kid == ""
    for bad in ({"kty": "nope"}, {}, {"kty": "RSA", "n": "x"}):
        with pytest.raises(JWTError):
            JWTKey.from_jwk(bad)


def test_valid_id():
    assert valid_id("a") and valid_id("x" * MAX_KID) and valid_id("../../etc/passwd")
    assert not any(valid_id(v) for v in ("", "x" * (MAX_KID + 1), "a\tb", 1, None, b"me"))


# --- verify_with, verify_jwks, the cache -----------------------------------------------------------------------

class Counting(JWTKey):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = 0

    def verify(self, signing_input, signature):
        self.calls += 1
        return super().verify(signing_input, signature)


def test_cache_skips_the_signature_for_a_repeated_token():
    key = Counting("HS256", SECRET)
    now = [NOW]
    v = JWTVerifier(claims_to_verify=["exp"], clock=lambda: now[0])
    token = hs({"iss": "me", "exp": NOW + 60})
    for _ in range(5):
        assert v.verify(token, {"me": key}).key is key
    assert key.calls == 1
    rotated = Counting("HS256", SECRET)  # a new object: verified again
    v.verify(token, {"me": rotated})
    assert rotated.calls == 1
    now[0] = NOW + 61  # claims are still checked on every call
    with pytest.raises(JWTError) as e:
        v.verify(token, {"me": rotated})
    assert code(e) == "expired"
    # a replaced key with another secret does not pass on the cached entry
    with pytest.raises(JWTError) as e:
        v.verify(token, {"me": JWTKey("HS256", "another-" + SECRET)})
    assert code(e) == "bad_signature"


def test_cache_stores_only_verified_tokens_and_is_bounded():
    v = JWTVerifier(cache_size=2)
    key = JWTKey("HS256", SECRET)
    for i in range(3):
        with pytest.raises(JWTError):
            v.verify(hs({"iss": "me", "n": i}, secret="bad-" + SECRET), {"me": key})
    assert len(v._cache) == 0
    for i in range(5):
        v.verify(hs({"iss": "me", "n": i}), {"me": key})
    assert len(v._cache) == 2
    off = JWTVerifier(cache_size=0)
    off.verify(hs({"iss": "me"}), {"me": key})
    assert off._cache == {}


def test_verify_with_and_verify_jwks(keys):
    key = JWTKey("EdDSA", keys["ed25519"].public_key(), kid="k1")
    token = pyjwt.encode({"sub": "x"}, keys["ed25519"], algorithm="EdDSA", headers={"kid": "k1"})

    class Source:
        def __init__(self):
            self.asked = []

        async def get_key(self, kid, alg=None):
            self.asked.append((kid, alg))
            return key if kid == "k1" else None

    src = Source()
    v = JWTVerifier()
    assert asyncio.run(v.verify_jwks(token, src)).claims == {"sub": "x"}
    assert src.asked == [("k1", "EdDSA")]
    other = pyjwt.encode({"sub": "x"}, keys["ed25519"], algorithm="EdDSA", headers={"kid": "k2"})
    with pytest.raises(JWTError) as e:
        asyncio.run(v.verify_jwks(other, src))
    assert code(e) == "unknown_key"
    assert v.verify_with(token, key).key is key


def test_hmac_verification_is_fast():
    key, v = JWTKey("HS256", SECRET), JWTVerifier(cache_size=0)
    token = hs({"iss": "me"})
    start = time.perf_counter()
    for _ in range(1000):
        v.verify(token, {"me": key})
    assert time.perf_counter() - start < 1.0  # ~20 us each uncached; generous for slow CI


# --- token extraction ------------------------------------------------------------------------------------------

def test_locator_defaults():
    loc = TokenLocator()
    assert loc.find("a=1&jwt=T1&b=2") == Found("T1", "query", "jwt")
    assert loc.find(b"jwt=T%2B1") == Found("T+1", "query", "jwt")
    assert loc.find("", {"authorization": "Bearer T2"}) == Found("T2", "header", "authorization")
    assert loc.find("", {"authorization": b"  bearer   T2  "}) == Found("T2", "header", "authorization")
    assert loc.find("", {"authorization": "BEARER T2"}).token == "T2"
    assert loc.find("", {"authorization": "Basic dXNlcjpwdw=="}) is None  # not a bearer token: ignored (Kong)
    assert loc.find("", {"authorization": "T2"}) is None
    assert loc.find("", {"authorization": "Bearer "}) is None
    assert loc.find("jwt=&x=1", {}) is None
    assert loc.find() is None


def test_locator_cookies_and_names():
    loc = TokenLocator(uri_param_names=["token", "jwt"], cookie_names=["session"], header_names=["X-Token"])
    assert loc.find("", {"cookie": "a=1; session=C1; session=C2"}) == Found("C1", "cookie", "session")
    assert loc.find("", {"x-token": "Bearer H1"}) == Found("H1", "header", "x-token")
    assert loc.find("", {"authorization": "Bearer H1"}) is None
    assert loc.find("token=Q1") == Found("Q1", "query", "token")
    assert loc.find("", {"cookie": "sessionx=1; session"}) is None


def test_locator_same_token_twice_is_one_and_two_tokens_are_refused():
    loc = TokenLocator(cookie_names=["jwt"])
    got = loc.find("jwt=T", {"cookie": "jwt=T", "authorization": "Bearer T"})
    assert got == Found("T", "query", "jwt")
    for query, headers in (("jwt=A&jwt=B", {}), ("jwt=A", {"authorization": "Bearer B"}),
                           ("", {"cookie": "jwt=A", "authorization": "Bearer B"})):
        with pytest.raises(JWTError) as e:
            loc.find(query, headers)
        assert code(e) == "multiple_tokens" and e.value.message == "Multiple tokens provided"
