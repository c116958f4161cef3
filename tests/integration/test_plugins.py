"""Plugins through the real gateway (issue 5): scoping and precedence, the phases, authentication at the edge, the
passport, routing by identity, third-party plugins. Plugin logic alone is in tests/unit/test_plugins_*.py."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import bcrypt
import jwt as pyjwt
import pytest

from gwanmun.passport import generate_key, verify
from tests.fixtures.gateway import route, service
from tests.fixtures.switchable import Switchable

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
HS_SECRET = "a-very-long-secret-for-hs256-tokens-0123456789"


def _rsa_pem() -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


RSA_PRIVATE, RSA_PUBLIC = _rsa_pem()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_confusion_token() -> str:
    """HS256 signed with the RSA *public* key as the HMAC secret: the classic alg-confusion attack."""
    import hashlib
    import hmac

    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps({"iss": "rsa-issuer", "aud": "memo", "exp": int(time.time()) + 600}).encode())
    sig = hmac.new(RSA_PUBLIC.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


@pytest.fixture(scope="module")
def keys():
    return [generate_key("EdDSA", "k1"), generate_key("ES256", "k2")]


@pytest.fixture
def up():
    u = Switchable("up")
    yield u
    u.close()


def consumers() -> dict:
    pw = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    return {
        "consumer_groups": [{"name": "beta"}, {"name": "staff"}],
        "consumers": [
            {"username": "alice", "custom_id": "a-1", "groups": ["beta"],
             "keyauth_credentials": [{"key": "alice-key"}],
             "basicauth_credentials": [{"username": "alice", "password": pw}],
             "jwt_secrets": [{"key": "memo-issuer", "secret": HS_SECRET}],
             "acls": [{"group": "writers"}]},
            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]},
            {"username": "rsa-app", "jwt_secrets": [{"key": "rsa-issuer", "algorithm": "RS256",
                                                     "rsa_public_key": RSA_PUBLIC}]},
        ],
    }


def token(claims: dict | None = None, **kw) -> str:
    now = int(time.time())
    body = {"iss": "memo-issuer", "sub": "alice", "aud": "memo", "nbf": now - 5, "exp": now + 600, **(claims or {})}
    return pyjwt.encode(body, kw.get("secret", HS_SECRET), algorithm=kw.get("alg", "HS256"),
                        headers=kw.get("headers"))


def seen_headers(r) -> dict:
    return r.json()["headers"]


# ----------------------------------------------------------------------------------------------------------------
# authentication at the edge, consumer headers, spoofing
# ----------------------------------------------------------------------------------------------------------------
def test_key_auth_sets_consumer_headers_and_hides_the_key(gateway, up):
    gw = gateway({**consumers(), "services": [service("s", up.url, [
        route("r", ["/"], plugins=[{"name": "key-auth", "config": {"hide_credentials": True}}])])]})
    r = gw.request("GET", "/x")
    assert r.status == 401 and r.json()["message"] == "No API key found in request" and r.json()["request_id"]
    assert r.header("www-authenticate").startswith("Key")
    r = gw.request("GET", "/x", headers={"apikey": "nope"})
    assert r.status == 401 and "nope" not in r.body.decode()
    r = gw.request("GET", "/x?apikey=alice-key&keep=1", headers={"X-Consumer-ID": "forged"})
    assert r.status == 200
    h = seen_headers(r)
    assert h["x-consumer-username"] == "alice" and h["x-consumer-custom-id"] == "a-1"
    assert h["x-consumer-id"] != "forged" and h["x-credential-identifier"]
    assert h["x-consumer-groups"] == "beta"
    assert r.json()["target"] == "/x?keep=1"  # the key is not passed on
    r = gw.request("GET", "/x", headers={"apikey": "bob-key"})
    assert "apikey" not in seen_headers(r) and seen_headers(r)["x-consumer-username"] == "bob"


def test_spoofed_identity_headers_are_dropped_on_every_route(gateway, up):
    gw = gateway({"services": [service("s", up.url, [route("r", ["/"])])]})
    r = gw.request("GET", "/x", headers={"X-Consumer-ID": "admin", "X-Consumer-Username": "root",
                                          "X-Credential-Identifier": "k", "X-Consumer-Groups": "admins",
                                          "X-Anonymous-Consumer": "false", "X-Passport": "forged"})
    h = seen_headers(r)
    assert not {k for k in h if k.startswith("x-consumer") or k in ("x-credential-identifier", "x-passport",
                                                                     "x-anonymous-consumer")}


def test_basic_auth_with_bcrypt_runs_off_the_loop(gateway, up):
    gw = gateway({**consumers(), "services": [service("s", up.url, [
        route("r", ["/"], plugins=[{"name": "basic-auth", "config": {"hide_credentials": True}}])])]})
    good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"alice:wrong").decode()
    assert gw.request("GET", "/x", headers={"Authorization": bad}).status == 401
    r = gw.request("GET", "/x", headers={"Authorization": good})
    assert r.status == 200 and "authorization" not in seen_headers(r)
    assert gw.request("GET", "/x", headers={"Authorization": good}).status == 200  # cached verification


JWT_SECURITY = [
    ("alg none", lambda: pyjwt.encode({"iss": "memo-issuer", "exp": int(time.time()) + 60}, None, algorithm="none")),
    ("expired", lambda: token({"exp": int(time.time()) - 10})),
    ("wrong issuer key", lambda: token({"iss": "someone-else"})),
    ("bad signature", lambda: token(secret="x" * 48)),
    ("kid injection", lambda: token(headers={"kid": "../../etc/passwd' OR 1=1 --"}, secret="y" * 48)),
    ("unknown crit", lambda: token(headers={"crit": ["exp-ext"], "exp-ext": 1})),
    ("not yet valid", lambda: token({"nbf": int(time.time()) + 600})),
    ("wrong audience", lambda: token({"aud": "another-service"})),
    ("HS/RS key confusion", key_confusion_token),
]


@pytest.mark.parametrize("case, make", JWT_SECURITY, ids=[c for c, _ in JWT_SECURITY])
def test_jwt_security_cases_are_refused_without_leaking(shared_gateway, scripted, case, make):
    gw = shared_gateway({**consumers(), "services": [service("s", scripted.url, [
        route("r", ["/"], plugins=[{"name": "jwt", "config": {"claims_to_verify": ["exp", "nbf"],
                                                              "audiences": ["memo"]}}])])]})
    tok = make()
    r = gw.request("GET", "/echo", headers={"Authorization": f"Bearer {tok}"})
    assert r.status == 401, (case, r.status, r.body)
    body = r.body.decode()
    assert HS_SECRET not in body and tok not in body and r.json()["request_id"]


def test_a_valid_hs256_token_passes_the_same_checks(shared_gateway, scripted):
    """The control for the security cases above: they fail for their own reason, not for a broken setup."""
    gw = shared_gateway({**consumers(), "services": [service("s", scripted.url, [
        route("r", ["/"], plugins=[{"name": "jwt", "config": {"claims_to_verify": ["exp", "nbf"],
                                                              "audiences": ["memo"]}}])])]})
    assert gw.request("GET", "/echo", headers={"Authorization": f"Bearer {token()}"}).status == 200


def test_rs256_token_accepted_when_signed_with_the_private_key(shared_gateway, scripted):
    gw = shared_gateway({**consumers(), "services": [service("s", scripted.url, [
        route("r", ["/"], plugins=[{"name": "jwt", "config": {"claims_to_verify": ["exp", "nbf"],
                                                              "audiences": ["memo"]}}])])]})
    now = int(time.time())  # Kong: a claim listed in claims_to_verify must be present
    tok = pyjwt.encode({"iss": "rsa-issuer", "aud": "memo", "nbf": now - 5, "exp": now + 60}, RSA_PRIVATE,
                       algorithm="RS256")
    assert gw.request("GET", "/echo", headers={"Authorization": f"Bearer {tok}"}).status == 200


def test_jwt_in_the_wrong_place_is_refused(gateway, up):
    gw = gateway({**consumers(), "services": [service("s", up.url, [
        route("r", ["/"], plugins=[{"name": "jwt", "config": {"uri_param_names": [], "cookie_names": []}}])])]})
    tok = token()
    assert gw.request("GET", f"/x?jwt={tok}").status == 401
    assert gw.request("GET", "/x", headers={"Cookie": f"jwt={tok}"}).status == 401
    assert gw.request("GET", "/x", headers={"Authorization": f"Bearer {tok}"}).status == 200


def test_acl_and_anonymous(gateway, up):
    gw = gateway({**consumers(), "services": [service("s", up.url, [
        route("w", ["/write"], plugins=[{"name": "key-auth"}, {"name": "acl", "config": {"allow": ["writers"]}}]),
        route("open", ["/open"], plugins=[{"name": "key-auth", "config": {"anonymous": "bob"}}]),
    ])]})
    assert gw.request("GET", "/write", headers={"apikey": "alice-key"}).status == 200
    r = gw.request("GET", "/write", headers={"apikey": "bob-key"})
    assert r.status == 403 and r.json()["message"] == "You cannot consume this service"
    r = gw.request("GET", "/open")
    assert r.status == 200 and seen_headers(r)["x-anonymous-consumer"] == "true"
    assert seen_headers(r)["x-consumer-username"] == "bob"


# ----------------------------------------------------------------------------------------------------------------
# the passport
# ----------------------------------------------------------------------------------------------------------------
def test_passport_replaces_the_credential_and_verifies_against_the_served_jwks(gateway, up, keys):
    gw = gateway({**consumers(), "gateway": {"passport": {"keys": keys}}, "services": [service("memo", up.url, [
        route("r", ["/"], plugins=[{"name": "jwt"}, {"name": "passport", "config": {"claims": ["plan"]}}])])]})
    tok = token({"plan": "pro"})
    r = gw.request("GET", "/x", headers={"Authorization": f"Bearer {tok}", "X-Passport": "forged"})
    assert r.status == 200
    h = seen_headers(r)
    assert "authorization" not in h
    jwks = json.loads(urllib.request.urlopen(f"{gw.url}/.well-known/gwanmun/jwks.json", timeout=5).read())
    assert {k["kid"] for k in jwks["keys"]} == {"k1", "k2"} and all("d" not in k for k in jwks["keys"])
    claims = verify(h["x-passport"], jwks, audience="memo")
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["beta"] and claims["plan"] == "pro"
    assert claims["exp"] - claims["iat"] <= 60
    with pytest.raises(Exception):
        verify(h["x-passport"], jwks, audience="another-service")
    again = seen_headers(gw.request("GET", "/y", headers={"Authorization": f"Bearer {tok}"}))["x-passport"]
    assert again == h["x-passport"]  # minted once per identity and interval
    r = gw.request("GET", "/x")
    assert r.status == 401


def test_passport_needs_gateway_keys(tmp_path):
    from gwanmun.config import load_text
    from gwanmun.config.compile import compile_runtime
    from gwanmun.errors import ConfigError

    loaded = load_text('_format_version: "3.0"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n'
                       '  - paths: [/]\n    plugins: [{name: passport}]\n', env={})
    with pytest.raises(ConfigError, match=r"services\[0\]\.routes\[0\]\.plugins\[0\]\.config.*gateway.passport"):
        compile_runtime(loaded)


# ----------------------------------------------------------------------------------------------------------------
# scoping, precedence, phases
# ----------------------------------------------------------------------------------------------------------------
def _termination(status: int, message: str) -> dict:
    return {"name": "request-termination", "config": {"status_code": status, "message": message}}


def test_precedence_route_over_service_over_global_and_consumer_scoped(gateway, up):
    gw = gateway({
        **consumers(),
        "plugins": [_termination(503, "global"), {"name": "key-auth"},
                    {"name": "request-termination", "consumer": "bob",
                     "config": {"status_code": 429, "message": "bob is limited"}}],
        "services": [
            service("a", up.url, [route("ra", ["/a"], plugins=[_termination(418, "route")])],
                    plugins=[_termination(410, "service")]),
            service("b", up.url, [route("rb", ["/b"])], plugins=[_termination(410, "service")]),
            service("c", up.url, [route("rc", ["/c"])]),
        ],
    })
    hdr = {"apikey": "alice-key"}
    assert (gw.request("GET", "/a", headers=hdr).status, gw.request("GET", "/a", headers=hdr).json()["message"]) \
        == (418, "route")
    assert gw.request("GET", "/b", headers=hdr).status == 410
    assert gw.request("GET", "/c", headers=hdr).status == 503
    # request-termination (priority 2) runs after key-auth: bob's own entity beats the global one
    r = gw.request("GET", "/c", headers={"apikey": "bob-key"})
    assert r.status == 429 and r.json()["message"] == "bob is limited"


def test_header_filters_see_plugin_replies_and_errors(gateway, refusing_port):
    gw = gateway({"plugins": [{"name": "cors", "config": {"origins": ["https://app.example"]}}],
                  "services": [service("dead", f"http://127.0.0.1:{refusing_port.port}", [route("r", ["/"])],
                                       retries=0)]})
    r = gw.request("GET", "/x", headers={"Origin": "https://app.example"})
    assert r.status == 502 and r.header("access-control-allow-origin") == "https://app.example"
    assert r.json()["request_id"]


def test_transformers_rewrite_request_and_response_bodies(gateway, up):
    gw = gateway({"services": [service("s", up.url, [route("r", ["/"], plugins=[
        {"name": "request-transformer", "config": {"add": {"headers": ["X-Added:1"], "body": ["source:gateway"]},
                                                   "remove": {"body": ["password"]}}},
        {"name": "response-transformer", "config": {"json_keep": ["server", "body"],
                                                    "add": {"headers": ["X-Shaped:yes"]}}},
    ])])]})
    r = gw.request("POST", "/x", body=b'{"user": "a", "password": "p"}', headers={"Content-Type": "application/json"})
    assert r.status == 200 and r.header("x-shaped") == "yes"
    doc = r.json()
    assert set(doc) == {"server", "body"}  # only the fields the client needs
    sent = json.loads(doc["body"])
    assert sent == {"user": "a", "source": "gateway"}
    assert int(r.header("content-length")) == len(r.body)


def test_plugin_config_errors_name_the_field_path(tmp_path):
    from gwanmun.config import load_text
    from gwanmun.errors import ConfigError

    text = ('_format_version: "3.0"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n'
            '  - paths: [/]\n    plugins:\n    - name: key-auth\n      config: {key_names: 5, bogus: 1}\n'
            '    - name: no-such-plugin\n')
    with pytest.raises(ConfigError) as e:
        load_text(text, env={})
    msg = str(e.value)
    assert "services[0].routes[0].plugins[0].config.key_names" in msg
    assert "services[0].routes[0].plugins[0].config.bogus" in msg
    assert "unknown plugin 'no-such-plugin'" in msg


# ----------------------------------------------------------------------------------------------------------------
# routing by identity
# ----------------------------------------------------------------------------------------------------------------
def test_splits_by_group_consumer_claim_and_stable_percent(gateway):
    main, beta, pro = Switchable("main"), Switchable("beta"), Switchable("pro")
    try:
        gw = gateway({**consumers(), "services": [
            service("main", main.url, [route("r", ["/"], plugins=[{"name": "key-auth"}, {"name": "jwt"}],
                                             splits=[{"consumer_groups": ["beta"], "claims": {"plan": ["pro"]},
                                                      "service": "pro"},
                                                     {"consumer_groups": ["beta"], "service": "beta"}])]),
            service("beta", beta.url, []), service("pro", pro.url, []),
        ]})
        tok = token({"plan": "pro"})
        # key-auth and jwt are both required (logical AND): alice by both
        h = {"apikey": "alice-key", "Authorization": f"Bearer {tok}"}
        assert gw.request("GET", "/x", headers=h).json()["server"] == "pro"
        h["Authorization"] = f"Bearer {token({'plan': 'free'})}"
        assert gw.request("GET", "/x", headers=h).json()["server"] == "beta"
    finally:
        for u in (main, beta, pro):
            u.close()


def test_percent_split_is_stable_per_consumer(gateway):
    from gwanmun.routing.identity import bucket

    main, canary = Switchable("main"), Switchable("canary")
    many = {"consumers": [{"username": f"u{i}", "keyauth_credentials": [{"key": f"key-{i}"}]} for i in range(60)]}
    try:
        gw = gateway({**many, "services": [
            service("main", main.url, [route("r", ["/"], plugins=[{"name": "key-auth"}],
                                             splits=[{"percent": 30, "service": "canary"}])]),
            service("canary", canary.url, []),
        ]})
        got = {}
        for i in range(60):
            first = gw.request("GET", "/", headers={"apikey": f"key-{i}"}).json()["server"]
            second = gw.request("GET", "/", headers={"apikey": f"key-{i}"}).json()["server"]
            assert first == second
            got[i] = first
        share = sum(1 for v in got.values() if v == "canary") / 60
        assert 0.1 < share < 0.5, share
        assert gw.request("GET", "/").status == 401
    finally:
        main.close()
        canary.close()
    assert 0 <= bucket("x") < 100


# ----------------------------------------------------------------------------------------------------------------
# third-party plugins
# ----------------------------------------------------------------------------------------------------------------
def test_third_party_plugin_found_through_its_entry_point(gateway, up, tmp_path):
    site = tmp_path / "site"
    dist = site / "gwanmun_response_time-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gwanmun-response-time\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[gwanmun.plugins]\nresponse-time = gwanmun_response_time:ResponseTime\n")
    gw = gateway({"plugins": [{"name": "response-time", "config": {"deny_methods": ["DELETE"]}}],
                  "services": [service("s", up.url, [route("r", ["/"])])]},
                 pythonpath=(str(site), str(REPO / "examples/plugins/response-time")))
    r = gw.request("GET", "/x")
    assert r.status == 200 and float(r.header("x-response-time-ms")) >= 0
    assert gw.request("DELETE", "/x").status == 405
