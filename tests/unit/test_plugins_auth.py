"""The authentication plugins (key-auth, basic-auth, jwt, acl) on a fake Ctx: Kong's behaviour, headers, messages,
the anonymous consumer and the logical OR, and the security cases of each."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from pydantic import ValidationError

from gwanmun.auth.secrets import PasswordPolicy, hash_key, hash_password
from gwanmun.plugins import basic_auth as basic_auth_mod
from gwanmun.plugins.acl import Acl
from gwanmun.plugins.base import (BasicCredential, BuildEnv, Consumer, Credential, Ctx, Headers, JwtSecret,
                                  KeyCredential, Reply)
from gwanmun.plugins.basic_auth import BasicAuth
from gwanmun.plugins.jwt import Jwt
from gwanmun.plugins.key_auth import KeyAuth

# --------------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------------

ALICE = Consumer("c-alice", username="alice", custom_id="A1", groups=("gold",), acl_groups=("admins",))
BOB = Consumer("c-bob", username="bob")
ANON = Consumer("c-anon", username="anonymous")
CONSUMERS = (ALICE, BOB, ANON)

HS_SECRET = "a-very-long-hmac-secret-of-at-least-32-bytes!"
FAST_BCRYPT = PasswordPolicy(scheme="bcrypt", bcrypt_rounds=4)
FAST_ARGON2 = PasswordPolicy(scheme="argon2", argon2_time_cost=1, argon2_memory_cost=8, argon2_parallelism=1)


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_pem(rsa_key) -> str:
    return rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def env(rsa_pem) -> BuildEnv:
    e = BuildEnv()
    for c in CONSUMERS:
        e.consumers[c.id] = c
        e.consumers_by_name[c.username] = c
        if c.custom_id:
            e.consumers_by_name[c.custom_id] = c
    e.groups = {"gold": (ALICE,)}
    e.keyauth = [
        KeyCredential("k-alice", "alice-key-123", hashed=False, consumer=ALICE),
        KeyCredential("k-bob", hash_key("bob-key-456"), hashed=True, consumer=BOB),
    ]
    e.basicauth = [
        BasicCredential("b-alice", "alice", hash_password("open sesame", FAST_BCRYPT), ALICE),
        BasicCredential("b-bob", "bob", hash_password("p:w:d", FAST_ARGON2), BOB),
    ]
    e.jwt_secrets = [
        JwtSecret("j-alice", "alice-iss", "HS256", HS_SECRET, None, ALICE),
        JwtSecret("j-bob", "bob-iss", "RS256", None, rsa_pem, BOB),
    ]
    return e


def ctx_(method: str = "GET", query: bytes = b"?a=1", headers: list[tuple[str, str]] = ()) -> Ctx:
    return Ctx(ex=None, method=method, path="/p", query=query,
               headers=Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]),
               client_ip="1.2.3.4", route=SimpleNamespace(name="r", id=None),
               service=SimpleNamespace(name="s", id=None), request_id="rid", started=0.0)


def run(result):
    """A plugin's answer: awaited with asyncio.run when it is an awaitable."""
    return asyncio.run(result) if inspect.isawaitable(result) else result


def chain(plugins, ctx: Ctx) -> Reply | None:
    """The access phase as the proxy runs it: by priority, stopping at a Reply."""
    for p in sorted(plugins, key=lambda p: -p.priority):
        reply = run(p.access(ctx))
        if reply is not None:
            return reply
    return None


def make(cls, env: BuildEnv, **config):
    return cls(cls.Config(**config), env)


def h(ctx: Ctx, name: str) -> str | None:
    return ctx.headers.get(name)


def assert_401(reply: Reply | None, message: str, www: str | None = None) -> None:
    assert isinstance(reply, Reply)
    assert reply.status == 401 and reply.error
    assert reply.body["message"] == message
    if www is not None:
        assert ("WWW-Authenticate", www) in reply.headers


def assert_identity(ctx: Ctx, consumer: Consumer, identifier: str) -> None:
    assert ctx.authenticated and ctx.consumer is consumer
    assert ctx.credential.identifier == identifier
    assert h(ctx, "X-Consumer-ID") == consumer.id
    assert h(ctx, "X-Consumer-Username") == consumer.username
    assert h(ctx, "X-Consumer-Custom-ID") == consumer.custom_id
    assert h(ctx, "X-Credential-Identifier") == identifier
    assert h(ctx, "X-Consumer-Groups") == (", ".join(consumer.groups) or None)
    assert h(ctx, "X-Anonymous-Consumer") is None


def assert_anonymous(ctx: Ctx) -> None:
    assert not ctx.authenticated and ctx.consumer is ANON and ctx.credential is None
    assert h(ctx, "X-Consumer-ID") == ANON.id and h(ctx, "X-Consumer-Username") == "anonymous"
    assert h(ctx, "X-Anonymous-Consumer") == "true"
    assert h(ctx, "X-Credential-Identifier") is None


# --------------------------------------------------------------------------------------------------------------
# key-auth
# --------------------------------------------------------------------------------------------------------------


def test_key_auth_header_success_sets_identity(env):
    p = make(KeyAuth, env)
    assert (p.name, p.priority) == ("key-auth", 1250)
    ctx = ctx_(headers=[("apikey", "alice-key-123")])
    assert p.access(ctx) is None
    assert_identity(ctx, ALICE, "k-alice")
    assert ctx.credential.kind == "key-auth"
    assert h(ctx, "apikey") == "alice-key-123"  # not hidden by default


def test_key_auth_query_and_hashed_key(env):
    p = make(KeyAuth, env)
    ctx = ctx_(query=b"?x=1&apikey=bob-key-456")
    assert p.access(ctx) is None
    assert_identity(ctx, BOB, "k-bob")
    assert ctx.query == b"?x=1&apikey=bob-key-456"
    # the stored hash itself is not a key
    ctx = ctx_(headers=[("apikey", hash_key("bob-key-456"))])
    assert_401(p.access(ctx), "Invalid authentication credentials")


@pytest.mark.parametrize("realm, www", [(None, 'Key realm="gwanmun"'), ("api", 'Key realm="api"')])
def test_key_auth_missing_and_invalid(env, realm, www):
    p = make(KeyAuth, env, realm=realm)
    assert_401(p.access(ctx_()), "No API key found in request", www)
    assert_401(p.access(ctx_(headers=[("apikey", "")])), "No API key found in request", www)
    assert_401(p.access(ctx_(query=b"?apikey")), "No API key found in request", www)  # bare name: no key
    assert_401(p.access(ctx_(headers=[("apikey", "nope")])), "Invalid authentication credentials", www)
    ctx = ctx_(headers=[("ApiKey", "nope")])
    assert_401(p.access(ctx), "Invalid authentication credentials", www)  # header names are case-insensitive
    assert not ctx.authenticated and ctx.consumer is None and h(ctx, "X-Consumer-ID") is None


def test_key_auth_duplicate_key(env):
    p = make(KeyAuth, env)
    dup = "Duplicate API key found"
    assert_401(p.access(ctx_(headers=[("apikey", "alice-key-123"), ("apikey", "x")])), dup)
    assert_401(p.access(ctx_(query=b"?apikey=alice-key-123&apikey=x")), dup)


def test_key_auth_key_names_order_and_sources(env):
    p = make(KeyAuth, env, key_names=["x-api-key", "apikey"])
    ctx = ctx_(query=b"?apikey=bob-key-456", headers=[("X-Api-Key", "alice-key-123")])
    assert p.access(ctx) is None and ctx.consumer is ALICE
    p = make(KeyAuth, env, key_in_header=False)
    assert_401(p.access(ctx_(headers=[("apikey", "alice-key-123")])), "No API key found in request")
    p = make(KeyAuth, env, key_in_query=False)
    assert_401(p.access(ctx_(query=b"?apikey=alice-key-123")), "No API key found in request")
    p = make(KeyAuth, env)
    ctx = ctx_(query=b"?apikey=alice%2Dkey%2D123")  # URL-decoded
    assert p.access(ctx) is None and ctx.consumer is ALICE


def test_key_auth_hide_credentials(env):
    p = make(KeyAuth, env, hide_credentials=True)
    ctx = ctx_(query=b"?a=1&apikey=zz", headers=[("apikey", "alice-key-123"), ("Accept", "*/*")])
    assert p.access(ctx) is None
    assert h(ctx, "apikey") is None and h(ctx, "Accept") == "*/*"
    assert ctx.query == b"?a=1"  # the query parameter of that name goes too, as Kong
    ctx = ctx_(query=b"?a=%20x&&apikey=bob-key-456&b=c+d&apikey=bob-key-456")
    assert_401(p.access(ctx), "Duplicate API key found")
    ctx = ctx_(query=b"?a=%20x&&apikey=bob-key-456&b=c+d;e")
    assert p.access(ctx) is None and ctx.consumer is BOB
    assert ctx.query == b"?a=%20x&&b=c+d;e"  # the rest kept byte for byte
    ctx = ctx_(query=b"?apikey=bob-key-456")
    assert p.access(ctx) is None and ctx.query == b""


def test_key_auth_preflight(env):
    p = make(KeyAuth, env, run_on_preflight=False)
    ctx = ctx_("OPTIONS")
    assert p.access(ctx) is None and ctx.consumer is None
    assert_401(p.access(ctx_("GET")), "No API key found in request")
    assert_401(make(KeyAuth, env).access(ctx_("OPTIONS")), "No API key found in request")


def test_key_auth_anonymous(env):
    p = make(KeyAuth, env, anonymous="anonymous")
    ctx = ctx_(headers=[("apikey", "wrong")])
    assert p.access(ctx) is None
    assert_anonymous(ctx)
    ctx = ctx_(headers=[("apikey", "alice-key-123")])
    assert p.access(ctx) is None
    assert_identity(ctx, ALICE, "k-alice")
    assert make(KeyAuth, env, anonymous="c-anon").anonymous_consumer is ANON  # by id too
    assert make(KeyAuth, env, anonymous="").anonymous_consumer is None


def test_identity_headers_non_latin1_names():
    from gwanmun.plugins.identity import authenticated
    yamada = Consumer("c-y", username="山田", groups=("é", "g"))
    ctx = ctx_()
    authenticated(ctx, yamada, Credential("k", "k", "key-auth"))
    assert (b"X-Consumer-Username", "山田".encode()) in ctx.headers.wire()  # sent as UTF-8
    assert (b"X-Consumer-Groups", "é, g".encode()) in ctx.headers.wire()


def test_key_auth_config_errors(env):
    with pytest.raises(ValidationError, match="key_in_body is not supported yet"):
        KeyAuth.Config(key_in_body=True)
    with pytest.raises(ValidationError, match="key name"):
        KeyAuth.Config(key_names=["bad name"])
    with pytest.raises(ValidationError):
        KeyAuth.Config(key_names=[])
    with pytest.raises(ValidationError):
        KeyAuth.Config(keynames=["x"])  # unknown field
    with pytest.raises(ValidationError, match="realm"):
        KeyAuth.Config(realm='a"b')
    with pytest.raises(ValueError, match="anonymous: no consumer"):
        make(KeyAuth, env, anonymous="ghost")
    assert KeyAuth.Config(key_names=None).key_names == ["apikey"]


def test_key_auth_skips_unusable_stored_hashes(env):
    e = BuildEnv(keyauth=[
        KeyCredential("k1", "hmac-sha256$" + "0" * 64, hashed=True, consumer=BOB),  # needs a pepper
        KeyCredential("k2", "sha256$nothex", hashed=True, consumer=BOB),
        KeyCredential("k3", "dup", hashed=False, consumer=ALICE),
        KeyCredential("k4", "dup", hashed=False, consumer=BOB),
    ])
    p = make(KeyAuth, e)
    assert len(p.keys) == 1
    assert_401(p.access(ctx_(headers=[("apikey", "sha256$nothex")])), "Invalid authentication credentials")
    ctx = ctx_(headers=[("apikey", "dup")])
    assert p.access(ctx) is None and ctx.consumer is ALICE


# --------------------------------------------------------------------------------------------------------------
# basic-auth
# --------------------------------------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("user, password, consumer", [("alice", "open sesame", ALICE), ("bob", "p:w:d", BOB)],
                         ids=["bcrypt", "argon2"])
def test_basic_auth_success_then_cached(env, monkeypatch, user, password, consumer):
    p = make(BasicAuth, env)
    assert (p.name, p.priority) == ("basic-auth", 1100)
    calls = []
    real = basic_auth_mod.verify_password
    monkeypatch.setattr(basic_auth_mod, "verify_password",
                        lambda stored, pw: calls.append(threading.current_thread().name) or real(stored, pw))
    ctx = ctx_(headers=[("Authorization", basic(user, password))])
    first = p.access(ctx)
    assert inspect.isawaitable(first)
    assert run(first) is None
    assert_identity(ctx, consumer, user)
    assert len(calls) == 1 and calls[0].startswith("gwanmun-password")  # off the loop
    ctx = ctx_(headers=[("Authorization", basic(user, password))])
    assert p.access(ctx) is None  # the cache: synchronous, no thread, no hash
    assert_identity(ctx, consumer, user)
    assert len(calls) == 1


def test_basic_auth_wrong_password_and_unknown_user(env, monkeypatch):
    p = make(BasicAuth, env)
    assert p.dummy_policy in (FAST_BCRYPT, FAST_ARGON2)  # dummy checks cost what real ones do
    www = 'Basic realm="service"'
    for _ in range(2):  # failures are never cached
        r = p.access(ctx_(headers=[("Authorization", basic("alice", "wrong"))]))
        assert inspect.isawaitable(r)
        assert_401(run(r), "Invalid authentication credentials", www)
    dummies = []
    real = basic_auth_mod.dummy_verify
    monkeypatch.setattr(basic_auth_mod, "dummy_verify", lambda pw, pol: dummies.append(pol) or real(pw, pol))
    r = p.access(ctx_(headers=[("Authorization", basic("mallory", "x"))]))
    assert inspect.isawaitable(r)
    assert_401(run(r), "Invalid authentication credentials", www)
    assert dummies == [p.dummy_policy]
    assert_401(p.access(ctx_()), "Unauthorized", www)
    assert_401(make(BasicAuth, env, realm="api").access(ctx_()), "Unauthorized", 'Basic realm="api"')


@pytest.mark.parametrize("value", [
    "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
    "Basic " + base64.b64encode(b":pw").decode(),
    "Bearer abc", "Basic", "Basic " + base64.b64encode(b"al\x01ice:pw").decode(), "Basic " + "QQ" * 5000,
    "Basic " + base64.b64encode(b"\xff\xfe:pw").decode(),
], ids=["not-base64", "no-colon", "empty-user", "other-scheme", "no-token", "control-char", "huge", "not-utf8"])
def test_basic_auth_malformed_headers(env, value):
    p = make(BasicAuth, env)
    r = p.access(ctx_(headers=[("Authorization", value)]))
    assert not inspect.isawaitable(r)  # nothing to hash
    assert_401(r, "Invalid authentication credentials")


def test_basic_auth_proxy_authorization_first_and_hide(env):
    p = make(BasicAuth, env, hide_credentials=True)
    ctx = ctx_(headers=[("Authorization", basic("alice", "open sesame")),
                        ("Proxy-Authorization", basic("bob", "p:w:d"))])
    assert run(p.access(ctx)) is None
    assert ctx.consumer is BOB
    assert h(ctx, "Authorization") is None and h(ctx, "Proxy-Authorization") is None
    # an unknown user in Proxy-Authorization falls through to Authorization
    ctx = ctx_(headers=[("Authorization", basic("alice", "open sesame")), ("Proxy-Authorization", basic("zed", "x"))])
    assert run(p.access(ctx)) is None and ctx.consumer is ALICE


def test_basic_auth_cache_ttl_bound_and_carry_over(env):
    p = make(BasicAuth, env)
    now = [100.0]
    p.clock = lambda: now[0]
    hdr = [("Authorization", basic("alice", "open sesame"))]
    assert run(p.access(ctx_(headers=hdr))) is None
    assert p.access(ctx_(headers=hdr)) is None
    now[0] += p.cache_ttl + 1
    r = p.access(ctx_(headers=hdr))
    assert inspect.isawaitable(r) and run(r) is None  # expired: checked again
    p.cache_size = 1
    assert run(p.access(ctx_(headers=[("Authorization", basic("bob", "p:w:d"))]))) is None
    assert len(p.cache) == 1
    assert inspect.isawaitable(r := p.access(ctx_(headers=hdr)))  # evicted
    run(r)
    q = make(BasicAuth, env)
    q.carry_over(p)
    q.clock = p.clock
    assert q.access(ctx_(headers=hdr)) is None  # same credentials, same hash: still trusted
    # a changed password hash never hits the old entry
    e2 = BuildEnv(consumers=env.consumers, basicauth=[
        BasicCredential("b-alice", "alice", hash_password("new one", FAST_BCRYPT), ALICE)])
    q2 = make(BasicAuth, e2)
    q2.carry_over(p)
    q2.clock = p.clock
    r = q2.access(ctx_(headers=hdr))
    assert inspect.isawaitable(r)
    assert_401(run(r), "Invalid authentication credentials")


def test_basic_auth_concurrent_checks_share_one_hash(env, monkeypatch):
    p = make(BasicAuth, env)
    calls = []
    real = basic_auth_mod.verify_password
    monkeypatch.setattr(basic_auth_mod, "verify_password", lambda s, pw: calls.append(1) or real(s, pw))
    hdr = [("Authorization", basic("alice", "open sesame"))]

    async def main():
        ctxs = [ctx_(headers=hdr) for _ in range(5)]
        results = await asyncio.gather(*(p.access(c) for c in ctxs))
        return ctxs, results

    ctxs, results = asyncio.run(main())
    assert results == [None] * 5 and all(c.consumer is ALICE for c in ctxs)
    assert len(calls) == 1


def test_basic_auth_anonymous(env):
    p = make(BasicAuth, env, anonymous="anonymous")
    ctx = ctx_()
    assert p.access(ctx) is None
    assert_anonymous(ctx)
    ctx = ctx_(headers=[("Authorization", basic("alice", "bad"))])
    assert run(p.access(ctx)) is None
    assert_anonymous(ctx)


# --------------------------------------------------------------------------------------------------------------
# jwt
# --------------------------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict, claims: dict, sign) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def hs(claims: dict, secret: str = HS_SECRET, **header) -> str:
    return pyjwt.encode(claims, secret, algorithm="HS256", headers=header or None)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def test_jwt_hs256_and_rs256_success(env, rsa_key):
    p = make(Jwt, env)
    assert (p.name, p.priority) == ("jwt", 1450)
    ctx = ctx_(headers=bearer(hs({"iss": "alice-iss", "scope": "read"})))
    assert p.access(ctx) is None
    assert_identity(ctx, ALICE, "alice-iss")
    assert ctx.claims == {"iss": "alice-iss", "scope": "read"}
    assert ctx.credential.id == "j-alice" and ctx.credential.kind == "jwt"
    assert ctx.shared["authenticated_jwt_token"]
    token = pyjwt.encode({"iss": "bob-iss"}, rsa_key, algorithm="RS256")
    ctx = ctx_(query=b"?jwt=" + token.encode())
    assert p.access(ctx) is None
    assert_identity(ctx, BOB, "bob-iss")


def test_jwt_no_token_and_realm(env):
    r = make(Jwt, env).access(ctx_())
    assert_401(r, "Unauthorized", "Bearer")
    r = make(Jwt, env, realm="api").access(ctx_(headers=[("Authorization", "Basic abc")]))
    assert_401(r, "Unauthorized", 'Bearer realm="api"')


def test_jwt_alg_none_refused(env):
    for alg in ("none", "None", "NONE"):
        token = raw_token({"alg": alg, "typ": "JWT"}, {"iss": "alice-iss"}, lambda _: b"")
        token = token if alg != "none" else token.rstrip(".") + "."
        r = make(Jwt, env).access(ctx_(headers=bearer(token)))
        assert_401(r, "Invalid algorithm", 'Bearer error="invalid_token"')


def test_jwt_hs_rs_key_confusion_refused(env, rsa_pem):
    # an attacker signs HS256 with the (public) RSA key PEM as the HMAC secret
    token = raw_token({"alg": "HS256", "typ": "JWT"}, {"iss": "bob-iss"},
                      lambda m: hmac.new(rsa_pem.encode(), m, hashlib.sha256).digest())
    assert_401(make(Jwt, env).access(ctx_(headers=bearer(token))), "Invalid algorithm")
    # and a config that uses a PEM as an HMAC secret is refused when the plugin is built
    e = BuildEnv(jwt_secrets=[JwtSecret("j-x", "x-iss", "HS256", rsa_pem, None, BOB)])
    with pytest.raises(ValueError, match="j-x"):
        make(Jwt, e)


def test_jwt_bad_signature_and_unknown_key(env):
    p = make(Jwt, env)
    assert_401(p.access(ctx_(headers=bearer(hs({"iss": "alice-iss"}, "another-secret-another-secret-123")))),
               "Invalid signature")
    assert_401(p.access(ctx_(headers=bearer(hs({"iss": "nobody"})))), "No credentials found for given 'iss'")
    assert_401(p.access(ctx_(headers=bearer(hs({"sub": "x"})))), "No mandatory 'iss' in claims")
    assert_401(p.access(ctx_(headers=bearer("abc.def"))), "Bad token; invalid serialization")
    r = p.access(ctx_(headers=bearer(hs({"iss": "nobody"}))))
    assert HS_SECRET not in json.dumps(r.body)


def test_jwt_kid_and_key_claim_injection(env):
    p = make(Jwt, env)
    for iss in ("../../etc/passwd", "alice-iss' OR '1'='1", "x" * 300, ["alice-iss"], {"$ne": 1}):
        token = raw_token({"alg": "HS256"}, {"iss": iss},
                          lambda m: hmac.new(HS_SECRET.encode(), m, hashlib.sha256).digest())
        r = p.access(ctx_(headers=bearer(token)))
        assert isinstance(r, Reply) and r.status == 401
        assert r.body["message"] in ("No credentials found for given 'iss'", "Invalid 'iss'")
    r = p.access(ctx_(headers=bearer(hs({"iss": "alice-iss"}, kid="a\nb"))))
    assert_401(r, "Bad token; invalid kid")


def test_jwt_unknown_crit_refused(env):
    p = make(Jwt, env)
    sign = lambda m: hmac.new(HS_SECRET.encode(), m, hashlib.sha256).digest()  # noqa: E731
    for header in ({"crit": ["x-ext"], "x-ext": 1}, {"crit": ["exp"]}, {"crit": ["b64"], "b64": True},
                   {"crit": "x"}, {"crit": []}):
        token = raw_token({"alg": "HS256", **header}, {"iss": "alice-iss"}, sign)
        r = p.access(ctx_(headers=bearer(token)))
        assert isinstance(r, Reply) and r.status == 401, header
        assert r.body["message"] in ("Bad token; unsupported critical header", "Bad token; invalid header")


def test_jwt_claims(env):
    now = int(time.time())
    p = make(Jwt, env, claims_to_verify=["exp", "nbf"])
    r = p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now - 10, "nbf": now - 20}))))
    assert_401(r, "token expired")
    assert r.body["exp"] == "token expired"  # Kong's body
    r = p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now + 100, "nbf": now + 50}))))
    assert_401(r, "token not valid yet")
    assert r.body["nbf"] == "token not valid yet"
    assert_401(p.access(ctx_(headers=bearer(hs({"iss": "alice-iss"})))), "exp must be a number")
    assert p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now + 100, "nbf": now - 1})))) is None
    # leeway
    p = make(Jwt, env, claims_to_verify=["exp"], leeway=30)
    assert p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now - 10})))) is None
    # not listed: not checked (Kong)
    assert make(Jwt, env).access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now - 10})))) is None


def test_jwt_maximum_expiration(env):
    now = int(time.time())
    p = make(Jwt, env, claims_to_verify=["exp"], maximum_expiration=60)
    r = p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now + 3600}))))
    assert_401(r, "exp exceeds maximum allowed expiration")
    assert p.access(ctx_(headers=bearer(hs({"iss": "alice-iss", "exp": now + 30})))) is None
    with pytest.raises(ValidationError, match="requires 'exp'"):
        Jwt.Config(maximum_expiration=60)
    with pytest.raises(ValidationError):
        Jwt.Config(maximum_expiration=31536001, claims_to_verify=["exp"])


def test_jwt_issuers_and_audiences(env):
    e = BuildEnv(jwt_secrets=[JwtSecret("j1", "k1", "HS256", HS_SECRET, None, ALICE)])
    p = make(Jwt, e, key_claim_name="key", issuers=["https://idp"], audiences=["api", "web"])
    ok = {"key": "k1", "iss": "https://idp", "aud": ["other", "api"]}
    assert p.access(ctx_(headers=bearer(hs(ok)))) is None
    assert_401(p.access(ctx_(headers=bearer(hs({**ok, "iss": "https://evil"})))), "Invalid issuer")
    assert_401(p.access(ctx_(headers=bearer(hs({**ok, "aud": "mobile"})))), "Invalid audience")
    assert_401(p.access(ctx_(headers=bearer(hs({"key": "k1", "iss": "https://idp"})))), "Invalid audience")


def test_jwt_token_places(env):
    token = hs({"iss": "alice-iss"})
    p = make(Jwt, env)  # query "jwt" and header Authorization only
    assert_401(p.access(ctx_(headers=[("Cookie", f"jwt={token}")])), "Unauthorized")
    assert_401(p.access(ctx_(headers=[("X-Token", f"Bearer {token}")])), "Unauthorized")
    assert_401(p.access(ctx_(query=b"?token=" + token.encode())), "Unauthorized")
    p = make(Jwt, env, uri_param_names=[], cookie_names=["session"], header_names=["x-token"])
    ctx = ctx_(headers=[("Cookie", f"a=b; session={token}")])
    assert p.access(ctx) is None and ctx.consumer is ALICE
    ctx = ctx_(headers=[("X-Token", f"bearer {token}")])
    assert p.access(ctx) is None and ctx.consumer is ALICE
    assert_401(p.access(ctx_(query=b"?jwt=" + token.encode())), "Unauthorized")
    assert_401(p.access(ctx_(headers=bearer(token))), "Unauthorized")


def test_jwt_multiple_tokens(env):
    t1, t2 = hs({"iss": "alice-iss"}), hs({"iss": "alice-iss", "n": 2})
    p = make(Jwt, env)
    r = p.access(ctx_(query=b"?jwt=" + t1.encode(), headers=bearer(t2)))
    assert_401(r, "Multiple tokens provided", 'Bearer error="invalid_token"')
    assert p.access(ctx_(query=b"?jwt=" + t1.encode(), headers=bearer(t1))) is None  # the same token twice
    assert_401(p.access(ctx_(query=b"?jwt=" + t1.encode() + b"&jwt=" + t2.encode())), "Multiple tokens provided")


def test_jwt_secret_is_base64_and_preflight(env):
    raw = b"\x00\x01binary secret of enough length....."
    e = BuildEnv(jwt_secrets=[JwtSecret("j1", "k1", "HS256", base64.b64encode(raw).decode(), None, ALICE)])
    p = make(Jwt, e, secret_is_base64=True)
    assert p.access(ctx_(headers=bearer(pyjwt.encode({"iss": "k1"}, raw, algorithm="HS256")))) is None
    p = make(Jwt, env, run_on_preflight=False)
    assert p.access(ctx_("OPTIONS")) is None
    assert_401(p.access(ctx_("GET")), "Unauthorized")


def test_jwt_anonymous(env):
    p = make(Jwt, env, anonymous="c-anon")
    ctx = ctx_(headers=bearer(hs({"iss": "alice-iss"}, "wrong-secret-wrong-secret-wrong-secret")))
    assert p.access(ctx) is None
    assert_anonymous(ctx)
    assert ctx.claims is None


# --------------------------------------------------------------------------------------------------------------
# JWKS mode, against a real local HTTP server
# --------------------------------------------------------------------------------------------------------------


class JwksServer:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.requests = 0
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                srv.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=300")
                self.send_header("Content-Length", str(len(srv.body)))
                self.end_headers()
                self.wfile.write(srv.body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def idp(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "ES256", "use": "sig"}
    server = JwksServer(json.dumps({"keys": [jwk]}).encode())
    yield SimpleNamespace(key=key, url=server.url, server=server)
    server.stop()


def test_jwt_jwks_mode(env, idp):
    now = int(time.time())
    p = make(Jwt, env, jwks_uri=idp.url, claims_to_verify=["exp"], issuers=["https://idp"])

    def es(claims, kid="k1", **header):
        return pyjwt.encode(claims, idp.key, algorithm="ES256", headers={"kid": kid, **header})

    async def main():
        out = {}
        ctx = ctx_(headers=bearer(es({"iss": "https://idp", "sub": "alice", "exp": now + 60})))
        out["alice"] = (await p.access(ctx), ctx)
        ctx = ctx_(headers=bearer(es({"iss": "https://idp", "sub": "stranger", "exp": now + 60})))
        out["stranger"] = (await p.access(ctx), ctx)
        ctx = ctx_(headers=bearer(es({"iss": "https://idp", "sub": "alice", "exp": now - 60})))
        out["expired"] = (await p.access(ctx), ctx)
        for kid in ("nope", "../../../etc/passwd", "k1?x=http://evil/"):
            out[kid] = await p.access(ctx_(headers=bearer(es({"iss": "https://idp", "exp": now + 60}, kid=kid))))
        ctx = ctx_(headers=bearer(es({"iss": "https://evil", "sub": "alice", "exp": now + 60})))
        out["evil"] = await p.access(ctx)
        # an HS256 token "signed" with the EC public key cannot pass
        pem = idp.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        forged = raw_token({"alg": "HS256", "kid": "k1"}, {"iss": "https://idp", "sub": "alice", "exp": now + 60},
                           lambda m: hmac.new(pem, m, hashlib.sha256).digest())
        out["forged"] = await p.access(ctx_(headers=bearer(forged)))
        await p.aclose()
        return out

    out = asyncio.run(main())
    reply, ctx = out["alice"]
    assert reply is None
    assert_identity(ctx, ALICE, "k1")
    assert ctx.claims["sub"] == "alice" and ctx.credential.id == "jwks:k1"
    reply, ctx = out["stranger"]
    assert reply is None and ctx.authenticated and ctx.consumer is None  # authenticated, no consumer
    assert h(ctx, "X-Credential-Identifier") == "k1" and h(ctx, "X-Consumer-ID") is None
    assert_401(out["expired"][0], "token expired")
    for kid in ("nope", "../../../etc/passwd", "k1?x=http://evil/"):
        assert_401(out[kid], "No credentials found for given 'kid'")
    assert_401(out["evil"], "Invalid issuer")
    assert_401(out["forged"], "Invalid algorithm")
    assert idp.server.requests == 1  # made-up kids did not make the gateway fetch again
    assert p.jwks is None  # closed


def test_jwt_jwks_carry_over_and_config(env, idp):
    cfg = Jwt.Config(jwks_uri=idp.url)
    old, new = Jwt(cfg, env), Jwt(cfg, env)

    async def main():
        token = pyjwt.encode({"sub": "bob"}, idp.key, algorithm="ES256", headers={"kid": "k1"})
        ctx = ctx_(headers=bearer(token))
        assert await old.access(ctx) is None and ctx.consumer is BOB
        new.carry_over(old)
        await old.aclose()  # the old runtime retires; the client lives on in the new one
        ctx = ctx_(headers=bearer(token))
        assert await new.access(ctx) is None and ctx.consumer is BOB
        await new.aclose()

    asyncio.run(main())
    assert idp.server.requests == 1
    with pytest.raises(ValidationError, match="http or https"):
        Jwt.Config(jwks_uri="file:///etc/passwd")


# --------------------------------------------------------------------------------------------------------------
# acl
# --------------------------------------------------------------------------------------------------------------


def authed(consumer: Consumer | None, credential: bool = True, shared: dict | None = None) -> Ctx:
    ctx = ctx_()
    ctx.consumer = consumer
    if credential:
        ctx.credential = Credential("x", "x", "key-auth")
        ctx.authenticated = True
    ctx.shared.update(shared or {})
    return ctx


def assert_403(reply) -> None:
    assert isinstance(reply, Reply) and reply.status == 403
    assert reply.body["message"] == "You cannot consume this service"


def test_acl_allow_and_deny(env):
    p = make(Acl, env, allow=["admins"])
    assert (p.name, p.priority) == ("acl", 950)
    ctx = authed(ALICE)
    assert p.access(ctx) is None
    assert h(ctx, "X-Consumer-Groups") == "admins, gold"
    assert_403(p.access(authed(BOB)))
    p = make(Acl, env, allow=["gold"])  # a consumer group name counts
    assert p.access(authed(ALICE)) is None
    assert_403(make(Acl, env, allow=["gold"], include_consumer_groups=False).access(authed(ALICE)))
    p = make(Acl, env, deny=["gold"], allow=[])
    assert_403(p.access(authed(ALICE)))
    ctx = authed(BOB)
    ctx.headers.set("X-Consumer-Groups", "stale")
    assert p.access(ctx) is None and h(ctx, "X-Consumer-Groups") is None
    ctx = authed(ALICE)
    assert make(Acl, env, allow=["admins"], hide_groups_header=True).access(ctx) is None
    assert h(ctx, "X-Consumer-Groups") is None


def test_acl_without_consumer_and_authenticated_groups(env):
    p = make(Acl, env, allow=["admins"])
    r = p.access(authed(None, credential=False))
    assert isinstance(r, Reply) and r.status == 401 and r.body["message"] == "Unauthorized"
    assert_403(p.access(authed(None, credential=True)))  # a token that names no consumer
    ctx = authed(None, credential=True, shared={"authenticated_groups": ["admins"]})
    assert p.access(ctx) is None and h(ctx, "X-Authenticated-Groups") == "admins"
    # the anonymous consumer: authenticated groups win over its own
    ctx = authed(ANON, credential=False, shared={"authenticated_groups": ["admins"]})
    assert p.access(ctx) is None
    assert_403(p.access(authed(ANON, credential=False)))
    # an authenticated consumer: its own groups, unless always_use_authenticated_groups
    assert_403(p.access(authed(BOB, shared={"authenticated_groups": ["admins"]})))
    q = make(Acl, env, allow=["admins"], always_use_authenticated_groups=True)
    assert q.access(authed(BOB, shared={"authenticated_groups": ["admins"]})) is None


def test_acl_config_errors():
    for cfg in ({}, {"allow": ["a"], "deny": ["b"]}, {"allow": [], "deny": []}, {"allow": None}):
        with pytest.raises(ValidationError, match="exactly one of 'allow' and 'deny'"):
            Acl.Config(**cfg)
    with pytest.raises(ValidationError):
        Acl.Config(allow=[""])


# --------------------------------------------------------------------------------------------------------------
# several plugins on one route: Kong's logical AND / OR
# --------------------------------------------------------------------------------------------------------------


def test_logical_or_with_anonymous(env):
    token = hs({"iss": "alice-iss"})
    plugins = [make(Jwt, env, anonymous="anonymous"), make(KeyAuth, env, anonymous="anonymous"),
               make(Acl, env, deny=["nobody"])]
    # jwt succeeds: key-auth (anonymous set) skips itself
    ctx = ctx_(headers=bearer(token))
    assert chain(plugins, ctx) is None
    assert ctx.consumer is ALICE and ctx.credential.kind == "jwt" and h(ctx, "X-Anonymous-Consumer") is None
    assert h(ctx, "X-Consumer-Groups") == "admins, gold"  # acl sends the groups it decided on, as Kong
    # jwt fails (anonymous), key-auth succeeds: the credential wins over the anonymous consumer
    ctx = ctx_(headers=[("apikey", "bob-key-456")])
    assert chain(plugins, ctx) is None
    assert_identity(ctx, BOB, "k-bob")
    # both fail: anonymous
    ctx = ctx_()
    assert chain(plugins, ctx) is None
    assert_anonymous(ctx)
    # the anonymous consumer can be kept out by an acl
    assert_403(chain([*plugins[:2], make(Acl, env, allow=["admins"])], ctx_()))


def test_logical_and_without_anonymous(env):
    token = hs({"iss": "alice-iss"})
    plugins = [make(Jwt, env), make(KeyAuth, env)]
    assert_401(chain(plugins, ctx_(headers=bearer(token))), "No API key found in request")
    ctx = ctx_(headers=[*bearer(token), ("apikey", "bob-key-456")])
    assert chain(plugins, ctx) is None
    assert ctx.consumer is BOB  # the last one to succeed sets the identity, as in Kong
    assert ctx.headers.get_all("X-Consumer-ID") == ["c-bob"]
    assert h(ctx, "X-Consumer-Custom-ID") is None and h(ctx, "X-Consumer-Groups") is None  # alice's are gone
    assert h(ctx, "X-Credential-Identifier") == "k-bob"
    # an anonymous jwt before an AND key-auth: key-auth still runs and must succeed
    plugins = [make(Jwt, env, anonymous="anonymous"), make(KeyAuth, env)]
    assert_401(chain(plugins, ctx_()), "No API key found in request")


# --------------------------------------------------------------------------------------------------------------
# the compiled fast paths (plugins/fastpath.py): the same answers as the plugins' own access
# --------------------------------------------------------------------------------------------------------------

def test_jwt_fast_path_remembers_only_accepted_tokens_and_checks_exp_again(env):
    p = make(Jwt, env, claims_to_verify=["exp"])
    path = p.access.__self__
    token = hs({"iss": "alice-iss", "exp": int(time.time()) + 2})
    for _ in range(2):  # verified by the plugin, then remembered and taken from memory
        ctx = ctx_(query=b"", headers=bearer(token))
        assert p.access(ctx) is None
        assert_identity(ctx, ALICE, "alice-iss")
        assert ctx.shared["authenticated_jwt_token"] == token
    assert list(path.seen) == [token]
    bad = hs({"iss": "alice-iss", "exp": int(time.time()) + 60}, secret="another-secret-0123456789-0123456789")
    assert_401(p.access(ctx_(query=b"", headers=bearer(bad))), "Invalid signature")
    assert list(path.seen) == [token]  # a refused token is never remembered
    # forms the plugin's parser refuses stay refused, even around a remembered token
    for value in (f"Bearer {token} extra", f"Bearer{token}", f"Token {token}"):
        assert_401(p.access(ctx_(query=b"", headers=[("Authorization", value)])), "Unauthorized")
    ctx = ctx_(query=b"", headers=[("Authorization", f"  bearer   {token} ")])  # the plugin's regex takes these
    assert p.access(ctx) is None and ctx.consumer is ALICE
    # a token in the query too: the plugin's answer ("Multiple tokens provided" when they differ)
    other = hs({"iss": "alice-iss", "exp": int(time.time()) + 60})
    reply = p.access(ctx_(query=b"?jwt=" + other.encode(), headers=bearer(token)))
    assert_401(reply, "Multiple tokens provided")
    time.sleep(2.1)  # the remembered token expires: refused as the plugin refuses it
    reply = p.access(ctx_(query=b"", headers=bearer(token)))
    assert_401(reply, "token expired")
    assert reply.body["exp"] == "token expired"


def test_jwt_fast_path_not_used_with_anonymous_or_cookies(env):
    anon = make(Jwt, env, anonymous=ANON.id)
    cookie = make(Jwt, env, cookie_names=["jwt"])
    assert not anon.access.__self__.fast and not cookie.access.__self__.fast
    ctx = ctx_(query=b"", headers=[("Cookie", "jwt=" + hs({"iss": "alice-iss"}))])
    assert cookie.access(ctx) is None and ctx.consumer is ALICE


def test_key_auth_fast_path_plain_and_hashed_keys(env):
    p = make(KeyAuth, env, hide_credentials=True)
    for key, consumer, cred in (("alice-key-123", ALICE, "k-alice"), ("bob-key-456", BOB, "k-bob")):
        ctx = ctx_(query=b"", headers=[("apikey", key)])
        assert p.access(ctx) is None
        assert_identity(ctx, consumer, cred)
        assert h(ctx, "apikey") is None  # hidden
    assert_401(p.access(ctx_(query=b"", headers=[("apikey", "alice-key-1234")])),
               "Invalid authentication credentials")
    assert_401(p.access(ctx_(query=b"", headers=[("apikey", "alice-key-123"), ("apikey", "alice-key-123")])),
               "Duplicate API key found")
