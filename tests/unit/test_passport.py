"""Passports (gwanmun/passport.py): minting, the JWKS, verification, key rotation, the reuse cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
import yaml

from gwanmun import passport
from gwanmun.passport import (
    JWKSUnavailable,
    PassportError,
    PassportSigner,
    generate_key,
    key_yaml,
    print_new_key,
    thumbprint,
    verify,
)

ALGS = ["EdDSA", "ES256"]


@pytest.fixture(scope="module")
def keys():
    """Two keys per algorithm, generated once."""
    return {alg: (generate_key(alg, kid=f"{alg}-1"), generate_key(alg, kid=f"{alg}-2")) for alg in ALGS}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64json(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def forge(header: dict, payload: dict, signature: bytes = b"") -> str:
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return ".".join((enc(json.dumps(header).encode()), enc(json.dumps(payload).encode()), enc(signature)))


def mint(signer: PassportSigner, **over) -> str:
    args = dict(consumer_id="c-42", username="alice", groups=["users", "admins"], claims={"tier": "gold"},
                request_id="rid-1", audience="memo")
    args.update(over)
    return signer.mint(**args)


# ------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("alg", ALGS)
def test_round_trip(keys, alg):
    signer = PassportSigner([keys[alg][0]], ttl=60)
    token = mint(signer)
    header = b64json(token.split(".")[0])
    assert header == {"alg": alg, "kid": f"{alg}-1", "typ": "passport+jwt"}
    claims = verify(token, signer.jwks(), audience="memo")
    assert claims["exp"] - claims["iat"] == 60
    assert abs(claims["iat"] - time.time()) < 5
    del claims["iat"], claims["exp"]
    assert claims == {"iss": "gwanmun", "sub": "c-42", "preferred_username": "alice", "groups": ["users", "admins"],
                      "tier": "gold", "aud": "memo", "jti": "rid-1"}


@pytest.mark.parametrize("alg", ALGS)
def test_jwks_shape(keys, alg):
    signer = PassportSigner(list(keys[alg]))
    jwks = signer.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [f"{alg}-1", f"{alg}-2"]
    for jwk in jwks["keys"]:
        assert jwk["alg"] == alg and jwk["use"] == "sig"
        assert "d" not in jwk  # public only
        if alg == "EdDSA":
            assert (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519") and len(base64.urlsafe_b64decode(jwk["x"] + "=")) == 32
        else:
            assert (jwk["kty"], jwk["crv"]) == ("EC", "P-256") and {"x", "y"} <= jwk.keys()
        jwt.PyJWK(jwk)  # a standard JWK
    jwks["keys"].clear()
    assert len(signer.jwks()["keys"]) == 2  # callers get a copy


def test_no_username_no_claims_generated_jti(keys):
    signer = PassportSigner([keys["EdDSA"][0]], reuse=0)
    a = verify(mint(signer, username=None, claims={}, request_id=None, groups=()), signer.jwks(), "memo")
    b = verify(mint(signer, username=None, claims={}, request_id=None, groups=()), signer.jwks(), "memo")
    assert "preferred_username" not in a and a["groups"] == []
    assert a["jti"] and a["jti"] != b["jti"]


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"claims": {"sub": "admin"}}, "set by the passport itself"),
        ({"claims": {"aud": "other"}}, "set by the passport itself"),
        ({"groups": "admins"}, "groups"),
        ({"consumer_id": ""}, "consumer_id"),
        ({"audience": ""}, "audience"),
    ],
    ids=["claim-sub", "claim-aud", "groups-str", "no-consumer", "no-audience"],
)
def test_mint_rejects(keys, over, message):
    with pytest.raises(ValueError, match=message):
        mint(PassportSigner([keys["EdDSA"][0]]), **over)


@pytest.mark.parametrize(
    ("spec", "kw", "message"),
    [
        ([], {}, "at least one"),
        ([{"kid": "a", "algorithm": "RS256", "private_key": "x"}], {}, "not supported"),
        ([{"kid": "a", "algorithm": "EdDSA", "private_key": "not a pem"}], {}, "PEM"),
        ("es-as-ed", {}, "Ed25519"),
        ("dup", {}, "used twice"),
        ("ok", {"ttl": 0}, "ttl"),
        ("ok", {"ttl": 60, "reuse": 60}, "reuse"),
        ("ok", {"cache_size": 0}, "cache_size"),
    ],
    ids=["empty", "alg", "pem", "key-type", "dup-kid", "ttl", "reuse", "cache"],
)
def test_signer_rejects(keys, spec, kw, message):
    ed, es = keys["EdDSA"][0], keys["ES256"][0]
    spec = {"es-as-ed": [{**es, "algorithm": "EdDSA"}], "dup": [ed, {**es, "kid": ed["kid"]}], "ok": [ed]}.get(
        spec, spec) if isinstance(spec, str) else spec
    with pytest.raises(ValueError, match=message):
        PassportSigner(spec, **kw)


# ------------------------------------------------------------------------------------------------- rotation


@pytest.mark.parametrize("alg", ALGS)
def test_kid_rotation(keys, alg):
    old, new = keys[alg]
    before = PassportSigner([old])  # 0: old signs
    token = mint(before)
    publish = PassportSigner([old, new])  # 1: new published, old still signs
    switched = PassportSigner([new, old])  # 2: new signs, old still published
    retired = PassportSigner([new])  # 3: old retired
    assert publish.kid == old["kid"] and switched.kid == new["kid"]
    for stage in (before, publish, switched):
        assert verify(token, stage.jwks(), "memo")["sub"] == "c-42"
    fresh = mint(switched)
    assert b64json(fresh.split(".")[0])["kid"] == new["kid"]
    assert verify(fresh, publish.jwks(), "memo")["sub"] == "c-42"  # backends that cached stage 1 accept it
    with pytest.raises(PassportError, match="unknown kid"):
        verify(token, retired.jwks(), "memo")
    assert verify(fresh, retired.jwks(), "memo")


def test_mixed_algorithms_in_one_set(keys):
    signer = PassportSigner([keys["ES256"][0], keys["EdDSA"][0]])
    token = mint(signer)
    assert b64json(token.split(".")[0])["alg"] == "ES256"
    assert verify(token, signer.jwks(), "memo")


# ------------------------------------------------------------------------------------------------- rejections


@pytest.fixture(scope="module")
def ed(keys):
    signer = PassportSigner([keys["EdDSA"][0]], reuse=0)
    return signer, signer.jwks()


def test_wrong_audience(ed):
    signer, jwks = ed
    with pytest.raises(PassportError, match="not for audience 'orders'"):
        verify(mint(signer), jwks, audience="orders")


def test_wrong_issuer(ed):
    signer, jwks = ed
    with pytest.raises(PassportError, match="issuer"):
        verify(mint(signer), jwks, audience="memo", issuer="other-gateway")


@pytest.mark.parametrize("alg", ALGS)
def test_expired(keys, alg):
    signer = PassportSigner([keys[alg][0]], ttl=60, clock=Clock(time.time() - 120))
    with pytest.raises(PassportError, match="expired"):
        verify(mint(signer), signer.jwks(), "memo")


def test_leeway(keys):
    signer = PassportSigner([keys["EdDSA"][0]], ttl=60, clock=Clock(time.time() - 62))
    token = mint(signer)
    assert verify(token, signer.jwks(), "memo", leeway=5)
    with pytest.raises(PassportError, match="expired"):
        verify(token, signer.jwks(), "memo", leeway=0)


def test_issued_in_the_future(keys):
    signer = PassportSigner([keys["EdDSA"][0]], clock=Clock(time.time() + 600))
    with pytest.raises(PassportError, match="(?i)future|not yet valid"):
        verify(mint(signer), signer.jwks(), "memo")


@pytest.mark.parametrize("alg", ALGS)
def test_tampered(keys, alg):
    signer = PassportSigner([keys[alg][0]])
    head, payload, sig = mint(signer).split(".")
    claims = b64json(payload)
    claims["sub"] = "admin"
    forged = forge(b64json(head), claims, base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    with pytest.raises(PassportError, match="bad signature"):
        verify(forged, signer.jwks(), "memo")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(PassportError):
        verify(f"{head}.{payload}.{flipped}", signer.jwks(), "memo")


def test_signed_by_a_key_not_in_the_set_under_a_known_kid(keys, ed):
    _, jwks = ed
    impostor = PassportSigner([{**keys["EdDSA"][1], "kid": keys["EdDSA"][0]["kid"]}])
    with pytest.raises(PassportError, match="bad signature"):
        verify(mint(impostor), jwks, "memo")


def test_alg_none(ed):
    signer, jwks = ed
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    token = jwt.encode(claims, None, algorithm="none", headers={"kid": signer.kid, "typ": "passport+jwt"})
    with pytest.raises(PassportError, match="'none' is not allowed"):
        verify(token, jwks, "memo")
    token = forge({"alg": "none", "kid": signer.kid, "typ": "passport+jwt"}, claims)
    with pytest.raises(PassportError, match="not allowed"):
        verify(token, jwks, "memo")


@pytest.mark.parametrize("secret_from", ["x", "jwk-json", "pem"])
def test_hs256_keyed_with_public_material(ed, secret_from):
    """The classic confusion: HS256 with the public key as the HMAC secret must never verify."""
    signer, jwks = ed
    jwk = jwks["keys"][0]
    secret = {
        "x": jwk["x"],
        "jwk-json": json.dumps(jwk),
        "pem": jwt.PyJWK(jwk).key.public_bytes(
            passport.serialization.Encoding.PEM, passport.serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    }[secret_from]
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    head = {"alg": "HS256", "kid": signer.kid, "typ": "passport+jwt"}
    unsigned = ".".join(forge(head, claims).split(".")[:2])
    sig = hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).digest()
    token = unsigned + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    with pytest.raises(PassportError, match="'HS256' is not allowed"):
        verify(token, jwks, "memo")


def test_unknown_kid(keys, ed):
    _, jwks = ed
    other = PassportSigner([keys["EdDSA"][1]])
    with pytest.raises(PassportError, match="unknown kid 'EdDSA-2'"):
        verify(mint(other), jwks, "memo")


def test_kid_of_another_algorithm(keys):
    """A kid that names an Ed25519 key cannot verify an ES256 signature (alg/kty mismatch is refused outright)."""
    ed_jwks = PassportSigner([keys["EdDSA"][0]]).jwks()
    es = PassportSigner([{**keys["ES256"][0], "kid": keys["EdDSA"][0]["kid"]}])
    with pytest.raises(PassportError, match="cannot verify ES256"):
        verify(mint(es), ed_jwks, "memo")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "no passport"),
        ("abc", "malformed"),
        ("a.b.c", "malformed"),
        ("x" * 9000, "longer than"),
    ],
    ids=["empty", "one-segment", "garbage", "huge"],
)
def test_malformed(ed, token, message):
    with pytest.raises(PassportError, match=message):
        verify(token, ed[1], "memo")


def test_wrong_typ_and_missing_kid(ed):
    signer, jwks = ed
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    key = signer._key.private
    plain = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": signer.kid})  # typ JWT
    with pytest.raises(PassportError, match="typ 'JWT'"):
        verify(plain, jwks, "memo")
    no_kid = jwt.encode(claims, key, algorithm="EdDSA", headers={"typ": "passport+jwt"})
    with pytest.raises(PassportError, match="no kid"):
        verify(no_kid, jwks, "memo")


def test_missing_claim(ed):
    signer, jwks = ed
    claims = jwt.decode(mint(signer), options={"verify_signature": False})
    del claims["jti"]
    token = jwt.encode(claims, signer._key.private, algorithm="EdDSA",
                       headers={"kid": signer.kid, "typ": "passport+jwt"})
    with pytest.raises(PassportError, match="'jti'"):
        verify(token, jwks, "memo")


def test_bad_jwks_argument(ed):
    signer, _ = ed
    with pytest.raises(ValueError, match="http"):
        verify(mint(signer), "/etc/jwks.json", "memo")
    with pytest.raises(ValueError, match="JWK Set"):
        verify(mint(signer), {"kid": "x"}, "memo")


# ------------------------------------------------------------------------------------------------- reuse cache


def test_cache_reuses_within_interval_then_mints_again(keys):
    clock = Clock(1_000_000.0)
    signer = PassportSigner([keys["EdDSA"][0]], ttl=60, reuse=30, clock=clock)
    first = mint(signer, request_id="rid-1")
    clock.now += 29.5
    assert mint(signer, request_id="rid-2") == first  # same identity and audience: the same token
    assert b64json(first.split(".")[1])["jti"] == "rid-1"  # jti names the minting request
    clock.now += 0.5  # 30 s old: minted again
    second = mint(signer, request_id="rid-3")
    assert second != first
    assert b64json(second.split(".")[1])["iat"] == 1_000_030
    assert b64json(second.split(".")[1])["jti"] == "rid-3"


def test_cache_key(keys):
    signer = PassportSigner([keys["EdDSA"][0]], clock=Clock(1_000_000.0))
    base = mint(signer)
    assert mint(signer, claims={"tier": "gold"}) == base
    assert mint(signer, request_id="other") == base
    for over in ({"audience": "orders"}, {"consumer_id": "c-43"}, {"username": "bob"}, {"groups": ["users"]},
                 {"claims": {"tier": "silver"}}, {"claims": {"tier": "gold", "roles": ["a"]}}):
        assert mint(signer, **over) != base, over
    assert mint(signer, claims={"tier": "gold", "roles": ["a"]}) == mint(signer, claims={"roles": ["a"], "tier": "gold"})


def test_clock_going_back_does_not_reuse_forever(keys):
    clock = Clock(1_000_000.0)
    signer = PassportSigner([keys["EdDSA"][0]], reuse=30, clock=clock)
    first = mint(signer)
    clock.now -= 10
    assert mint(signer) != first


def test_reuse_zero_always_mints(keys):
    signer = PassportSigner([keys["EdDSA"][0]], reuse=0, clock=Clock(1_000_000.0))
    assert mint(signer, request_id="a") != mint(signer, request_id="b")
    assert len(signer._cache) == 0


def test_cache_is_bounded_lru(keys):
    clock = Clock(1_000_000.0)
    signer = PassportSigner([keys["EdDSA"][0]], cache_size=3, clock=clock)
    tokens = {c: mint(signer, consumer_id=c) for c in ("a", "b", "c")}
    assert mint(signer, consumer_id="a") == tokens["a"]  # a is now the most recent
    mint(signer, consumer_id="d")  # evicts b, the least recently used
    assert len(signer._cache) == 3
    clock.now += 1  # a re-mint now has another iat, so a changed token means it was evicted
    assert mint(signer, consumer_id="a") == tokens["a"]
    assert mint(signer, consumer_id="c") == tokens["c"]
    assert mint(signer, consumer_id="b") != tokens["b"]
    assert len(signer._cache) == 3


def test_reused_token_keeps_ttl_minus_reuse(keys):
    clock = Clock(1_000_000.9)  # a fractional mint time: iat is truncated, the reuse window counts from iat
    signer = PassportSigner([keys["EdDSA"][0]], ttl=60, reuse=30, clock=clock)
    first = mint(signer)
    clock.now = 1_000_029.99
    assert mint(signer) == first
    assert b64json(first.split(".")[1])["exp"] - clock.now >= 60 - 30


# ------------------------------------------------------------------------------------------------- JWKS by URL


class JWKSServer:
    def __init__(self, jwks: dict) -> None:
        self.jwks, self.hits, self.fail = jwks, 0, False
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                if outer.fail:
                    self.send_error(500)
                    return
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server(keys):
    passport._remote.clear()
    server = JWKSServer(PassportSigner([keys["EdDSA"][0]]).jwks())
    yield server
    server.close()
    passport._remote.clear()


def test_jwks_url_cached(keys, jwks_server):
    signer = PassportSigner([keys["EdDSA"][0]], reuse=0)
    for _ in range(5):
        assert verify(mint(signer), jwks_server.url, "memo")["sub"] == "c-42"
    assert jwks_server.hits == 1


def test_jwks_url_refetch_on_unknown_kid_is_rate_limited(keys, jwks_server, monkeypatch):
    new = PassportSigner([keys["EdDSA"][1], keys["EdDSA"][0]])
    verify(mint(PassportSigner([keys["EdDSA"][0]])), jwks_server.url, "memo")
    token = mint(new)
    with pytest.raises(PassportError, match="unknown kid"):  # fetched moments ago: no refetch yet
        verify(token, jwks_server.url, "memo")
    assert jwks_server.hits == 1
    jwks_server.jwks = new.jwks()  # the gateway publishes the new key
    monkeypatch.setattr(passport, "JWKS_REFETCH", 0.0)
    assert verify(token, jwks_server.url, "memo")  # an unknown kid fetches again
    assert jwks_server.hits == 2


def test_jwks_url_failure(keys, jwks_server, monkeypatch):
    signer = PassportSigner([keys["EdDSA"][0]])
    token = mint(signer)
    assert verify(token, jwks_server.url, "memo")
    jwks_server.fail = True
    monkeypatch.setattr(passport, "JWKS_REFETCH", 0.0)
    monkeypatch.setattr(passport, "JWKS_TTL", 0.0)
    assert verify(token, jwks_server.url, "memo")  # the last good copy keeps serving
    assert jwks_server.hits == 2
    monkeypatch.setattr(passport, "JWKS_STALE", 0.0)
    with pytest.raises(JWKSUnavailable, match="HTTP Error 500"):
        verify(token, jwks_server.url, "memo")


def test_jwks_url_unreachable(keys):
    passport._remote.clear()
    signer = PassportSigner([keys["EdDSA"][0]])
    with pytest.raises(JWKSUnavailable, match="JWKS unavailable"):
        verify(mint(signer), "http://127.0.0.1:9/jwks.json", "memo")
    passport._remote.clear()


# ------------------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("alg", ALGS)
def test_generate_key_and_yaml(alg):
    key = generate_key(alg)
    signer = PassportSigner([key])
    assert key["kid"] == thumbprint(signer.jwks()["keys"][0])
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    out = io.StringIO()
    printed = print_new_key(alg, kid="-2025-01", file=out)
    loaded = yaml.safe_load(out.getvalue())
    assert loaded == [printed] and loaded[0]["kid"] == "-2025-01"
    assert yaml.safe_load(key_yaml(key)) == [key]
    assert verify(mint(PassportSigner(loaded)), PassportSigner(loaded).jwks(), "memo")


def test_thumbprint_rfc7638_example():
    """RFC 8037 appendix A.3: the RFC 7638 thumbprint of its Ed25519 example key."""
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_generate_key_rejects_other_algorithms():
    with pytest.raises(ValueError, match="not supported"):
        generate_key("RS256")


# ------------------------------------------------------------------------------------------------------------------
# the passport plugin's compiled path (plugins/fastpath.PassportPath)
# ------------------------------------------------------------------------------------------------------------------

def test_plugin_fast_path_reuses_per_consumer_and_service_and_strips_credentials(keys):
    from types import SimpleNamespace

    from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, Headers
    from gwanmun.plugins.passport import Passport

    env = BuildEnv(passport=SimpleNamespace(keys=[SimpleNamespace(model_dump=lambda k=keys["EdDSA"][0]: k)],
                                            issuer="gwanmun"))
    plugin = Passport(Passport.Config(reuse=20, ttl=60), env)
    alice = Consumer("c-1", "alice", groups=("beta",))
    jwks = {"keys": [dict(k) for k in plugin.signer.jwks()["keys"]]}

    def request(service, consumer=alice):
        ctx = Ctx(None, "GET", "/", b"", Headers([(b"Authorization", b"Bearer t"), (b"apikey", b"k"),
                                                   (b"X-Passport", b"forged"), (b"Accept", b"*/*")]),
                  "1.2.3.4", SimpleNamespace(name="r", id=None), service, "rid", 0.0)
        ctx.authenticate(consumer, Credential("k-1", "k-1", "key-auth"))
        assert plugin.access(ctx) is None
        names = [n.lower() for n, _ in ctx.headers.items()]
        assert "authorization" not in names and "apikey" not in names and "accept" in names
        assert [v for n, v in ctx.headers.items() if n.lower() == "x-passport"] == [ctx.headers.get("X-Passport")]
        return ctx.headers.get("X-Passport")

    orders, memos = SimpleNamespace(name="orders", id=None), SimpleNamespace(name="memos", id=None)
    first = request(orders)
    assert first != "forged" and request(orders) == first  # reused within the interval
    other = request(memos)
    assert other != first
    assert verify(first, jwks, audience="orders")["preferred_username"] == "alice"
    assert verify(other, jwks, audience="memos")["groups"] == ["beta"]
    bob = Consumer("c-2", "bob")
    assert verify(request(orders, bob), jwks, audience="orders")["sub"] == "c-2"
