"""TLS in the config layer and the compiled runtime: certificates, snis and ca_certificates entities (errors with path,
line and reason), the gateway's ssl_* settings, the certificate chosen for an SNI, upstream TLS settings and pools.

End-to-end behaviour (real handshakes) is in tests/integration/test_tls.py.
"""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from gwanmun.config import load_data, load_text
from gwanmun.config.compile import compile_runtime
from gwanmun.errors import ConfigError
from gwanmun.routing.router import RouteEntry, Router
from gwanmun.routing.schemes import SchemeRouter, build_router
from gwanmun.tls import build_server_tls, sni_candidates
from gwanmun.upstream.balancer import Target
from gwanmun.upstream.pool import Pools, host_name
from tests.fixtures.certs import TestCA

CA = TestCA("unit test CA")
A = CA.issue("a.test")
B = CA.issue("b.test")
RSA = CA.issue("a.test", key="rsa", cn="a.test rsa")


def q(text: str) -> str:
    """A PEM block as a YAML double-quoted scalar."""
    return json.dumps(text)


def load(text: str):
    return load_text(textwrap.dedent(text).lstrip("\n"), filename="kong.yml", env={})


def issues(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as exc:
        load(text)
    from gwanmun.errors import format_path

    return [(format_path(i.path), i.line, i.message) for i in exc.value.issues]


def one_issue(text: str) -> tuple[str, int | None, str]:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


HEAD = '_format_version: "3.0"\n'


def cert_yaml(issued=A, snis: str = "[a.test]", extra: str = "", key_pem: str | None = None) -> str:
    return (f"- cert: {q(issued.cert_pem)}\n  key: {q(key_pem or issued.key_pem)}\n  snis: {snis}\n"
            + (f"  {extra}\n" if extra else ""))


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def test_certificates_snis_and_cas_load() -> None:
    cid, ca_id = str(uuid.uuid4()), str(uuid.uuid4())
    cfg = load(HEAD + f"""
certificates:
- id: {cid}
  cert: {q(A.chain_pem)}
  key: {q(A.key_pem)}
  cert_alt: {q(RSA.cert_pem)}
  key_alt: {q(RSA.key_pem)}
  tags: [edge]
  snis: [a.test, {{name: "*.A.test", tags: [x]}}]
snis:
- name: Other.Test
  certificate: {{id: {cid}}}
ca_certificates:
- id: {ca_id}
  cert: {q(CA.cert_pem)}
services:
- name: s
  url: https://backend.test
  tls_verify: true
  tls_verify_depth: 3
  ca_certificates: [{ca_id}]
  client_certificate: {{id: {cid}}}
""").config
    c = cfg.certificates[0]
    assert [s.name for s in c.snis] == ["a.test", "*.a.test"]  # lower-cased
    assert cfg.snis[0].certificate == cid and cfg.snis[0].name == "other.test"
    assert [(n, x is c) for n, x in cfg.all_snis()] == [("a.test", True), ("*.a.test", True), ("other.test", True)]
    svc = cfg.services[0]
    assert (svc.protocol, svc.port, svc.tls_verify, svc.tls_verify_depth) == ("https", 443, True, 3)
    assert svc.client_certificate == cid and svc.ca_certificates == [ca_id]
    assert "PRIVATE KEY" not in repr(c)  # key material stays out of reprs and logs


def test_tls_fields_may_be_null_on_http_services() -> None:
    """decK writes Kong's nulls; an empty ca_certificates list changes nothing either."""
    cfg = load(HEAD + "services:\n- {name: s, host: a, tls_verify: null, tls_verify_depth: null, "
                      "client_certificate: null, ca_certificates: []}\n").config
    assert cfg.services[0].protocol == "http"


def test_listen_ssl_flag() -> None:
    gw = load(HEAD + 'gateway:\n  listen: ["0.0.0.0:8000", "[::]:8443 ssl", "*:9443 ssl"]\n').config.gateway
    assert gw.listeners() == [("0.0.0.0", 8000, False), ("::", 8443, True), ("0.0.0.0", 9443, True)]
    assert gw.listen_addresses() == [("0.0.0.0", 8000), ("::", 8443), ("0.0.0.0", 9443)]


def test_ssl_cert_from_files_and_inline(tmp_path) -> None:
    crt, key = A.write(tmp_path, "default")
    ecdsa_files = load(HEAD + f"gateway:\n  ssl_cert: {crt}\n  ssl_cert_key: {key}\n").config.gateway
    assert ecdsa_files.ssl_cert == [str(crt)]
    both = load(HEAD + f"gateway:\n  ssl_cert: [{crt}, {q(RSA.cert_pem)}]\n"
                       f"  ssl_cert_key: [{key}, {q(RSA.key_pem)}]\n").config.gateway
    assert len(both.ssl_cert) == 2


# ---------------------------------------------------------------------------------------------------------------------
# Errors: field path, line and reason
# ---------------------------------------------------------------------------------------------------------------------

WRONG_KEY = B.key_pem
ENCRYPTED_KEY = serialization.load_pem_private_key(A.key_pem.encode(), None).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret")).decode()


ERRORS = [
    ("not PEM", HEAD + "certificates:\n- cert: hello\n  key: " + q(A.key_pem) + "\n",
     ("certificates[0].cert", 3, "invalid certificate: expected PEM text")),
    ("bad PEM", HEAD + "certificates:\n- cert: " + q("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
     + "\n  key: " + q(A.key_pem) + "\n", ("certificates[0].cert", 3, "invalid PEM certificate")),
    ("bad key", HEAD + "certificates:\n- cert: " + q(A.cert_pem) + "\n  key: " + q(A.cert_pem) + "\n",
     ("certificates[0].key", 4, "invalid PEM private key")),
    ("encrypted key", HEAD + "certificates:\n" + cert_yaml(key_pem=ENCRYPTED_KEY),
     ("certificates[0].key", 4, "encrypted private keys are not supported")),
    ("vault reference", HEAD + "certificates:\n- cert: '{vault://env/cert}'\n  key: " + q(A.key_pem) + "\n",
     ("certificates[0].cert", 3, "vault references are not supported by gwanmun yet")),
    ("key mismatch", HEAD + "certificates:\n" + cert_yaml(key_pem=WRONG_KEY),
     ("certificates[0].key", 4, "certificate does not match key")),
    ("alt without key", HEAD + "certificates:\n" + cert_yaml(extra="cert_alt: " + q(RSA.cert_pem)),
     ("certificates[0].cert_alt", 6, "'cert_alt' and 'key_alt' must be set together")),
    ("alt same type", HEAD + "certificates:\n" + cert_yaml(
        extra="cert_alt: " + q(B.cert_pem) + "\n  key_alt: " + q(B.key_pem)),
     ("certificates[0].cert_alt", 6, "need to have different types (e.g. RSA and ECDSA): both are ECDSA")),
    ("alt mismatch", HEAD + "certificates:\n" + cert_yaml(
        extra="cert_alt: " + q(RSA.cert_pem) + "\n  key_alt: " + q(B.key_pem)),
     ("certificates[0].key_alt", 7, "alternative certificate does not match key")),
    ("duplicate sni nested", HEAD + "certificates:\n" + cert_yaml(snis="[a.test]") + cert_yaml(B, snis="[A.TEST]"),
     ("certificates[1].snis[0]", 8, "duplicate SNI 'a.test' (already used at certificates[0].snis[0], line 5)")),
    ("duplicate sni top-level", HEAD + "certificates:\n- id: 11111111-1111-4111-8111-111111111111\n  cert: "
     + q(A.cert_pem) + "\n  key: " + q(A.key_pem) + "\n  snis: [{name: a.test}]\nsnis:\n- name: a.test\n"
     "  certificate: {id: 11111111-1111-4111-8111-111111111111}\n",
     ("snis[0].name", 8, "duplicate SNI 'a.test' (already used at certificates[0].snis[0].name, line 6)")),
    ("unknown certificate", HEAD + "snis:\n- name: a.test\n  certificate: {id: 22222222-2222-4222-8222-222222222222}\n",
     ("snis[0].certificate", 4, "no certificate with id '22222222-2222-4222-8222-222222222222'")),
    ("top-level sni without certificate", HEAD + "snis:\n- name: a.test\n",
     ("snis[0].certificate", 3, "field 'certificate' is required for a top-level SNI")),
    ("nested sni with certificate", HEAD + "certificates:\n" + cert_yaml(
        snis="[{name: a.test, certificate: {id: 22222222-2222-4222-8222-222222222222}}]"),
     ("certificates[0].snis[0].certificate", 5, "an SNI nested under a certificate must not set 'certificate'")),
    ("sni ip", HEAD + "certificates:\n" + cert_yaml(snis="[10.0.0.1]"),
     ("certificates[0].snis[0].name", 5, "invalid SNI '10.0.0.1': must not be an IP address")),
    ("sni port", HEAD + "certificates:\n" + cert_yaml(snis="['a.test:443']"),
     ("certificates[0].snis[0].name", 5, "must not have a port")),
    ("sni wildcard inside", HEAD + "certificates:\n" + cert_yaml(snis="['a.*.test']"),
     ("certificates[0].snis[0].name", 5, "the wildcard must be the leftmost or rightmost label")),
    ("sni two wildcards", HEAD + "certificates:\n" + cert_yaml(snis="['*.a.*']"),
     ("certificates[0].snis[0].name", 5, "only one wildcard must be specified")),
    ("unknown client certificate", HEAD + "services:\n- name: s\n  url: https://a\n"
     "  client_certificate: {id: 33333333-3333-4333-8333-333333333333}\n",
     ("services[0].client_certificate", 5, "no certificate with id '33333333-3333-4333-8333-333333333333'")),
    ("unknown upstream client certificate", HEAD + "upstreams:\n- name: u\n"
     "  client_certificate: 33333333-3333-4333-8333-333333333333\n",
     ("upstreams[0].client_certificate", 4, "no certificate with id")),
    ("unknown ca certificate", HEAD + "services:\n- name: s\n  url: https://a\n  tls_verify: true\n"
     "  ca_certificates: [44444444-4444-4444-8444-444444444444]\n",
     ("services[0].ca_certificates[0]", 6, "no CA certificate with id '44444444-4444-4444-8444-444444444444'")),
    ("ca id not a uuid", HEAD + "services:\n- name: s\n  url: https://a\n  ca_certificates: [root]\n",
     ("services[0].ca_certificates[0]", 5, "expected a UUID")),
    ("tls on http service", HEAD + "services:\n- name: s\n  url: http://a\n  tls_verify_depth: 2\n",
     ("services[0].tls_verify_depth", 5, "'tls_verify_depth' is only allowed when 'protocol' is 'https'")),
    ("depth out of range", HEAD + "services:\n- name: s\n  url: https://a\n  tls_verify_depth: 65\n",
     ("services[0].tls_verify_depth", 5, "must be between 0 and 64, got 65")),
    ("ca not a CA", HEAD + "ca_certificates:\n- cert: " + q(A.cert_pem) + "\n",
     ("ca_certificates[0].cert", 3, 'missing the "CA" basic constraint')),
    ("ca expired", HEAD + "ca_certificates:\n- cert: " + q(TestCA("old", valid_days=-1).cert_pem) + "\n",
     ("ca_certificates[0].cert", 3, "certificate expired")),
    ("ca chain", HEAD + "ca_certificates:\n- cert: " + q(CA.cert_pem + TestCA("b").cert_pem) + "\n",
     ("ca_certificates[0].cert", 3, "please submit only one certificate at a time")),
    ("ca digest", HEAD + "ca_certificates:\n- cert: " + q(CA.cert_pem) + "\n  cert_digest: abc\n",
     ("ca_certificates[0].cert_digest", 4, "does not match the certificate")),
    ("duplicate certificate id", HEAD + "certificates:\n"
     + cert_yaml(extra="id: 55555555-5555-4555-8555-555555555555")
     + cert_yaml(B, snis="[b.test]", extra="id: 55555555-5555-4555-8555-555555555555"),
     ("certificates[1].id", 10, "duplicate certificate id")),
    ("listen flag", HEAD + "gateway:\n  listen: ['0.0.0.0:8443 ssl proxy_protocol']\n",
     ("gateway.listen[0]", 3, "listen flag 'proxy_protocol' is not supported by gwanmun yet")),
    ("listen unknown flag", HEAD + "gateway:\n  listen: ['0.0.0.0:8443 tls']\n",
     ("gateway.listen[0]", 3, "unknown flag 'tls'")),
    ("ssl_cert missing file", HEAD + "gateway:\n  ssl_cert: /nonexistent/cert.pem\n  ssl_cert_key: " + q(A.key_pem)
     + "\n",
     ("gateway.ssl_cert[0]", 3, "cannot read '/nonexistent/cert.pem': No such file or directory")),
    ("ssl_cert without key", HEAD + "gateway:\n  ssl_cert: " + q(A.cert_pem) + "\n",
     ("gateway", 2, "ssl_cert and ssl_cert_key must list as many entries (1 and 0)")),
    ("ssl_cert key mismatch", HEAD + "gateway:\n  ssl_cert: " + q(A.cert_pem) + "\n  ssl_cert_key: " + q(B.key_pem)
     + "\n", ("gateway", 2, "ssl_cert[0] and ssl_cert_key[0]: certificate does not match key")),
    ("ssl_protocols too old", HEAD + "gateway:\n  ssl_protocols: TLSv1.1 TLSv1.2\n",
     ("gateway.ssl_protocols", 3, "TLSv1.1 is not offered by gwanmun: TLS 1.2 is the minimum")),
    ("ssl_cipher_suite old", HEAD + "gateway:\n  ssl_cipher_suite: old\n",
     ("gateway.ssl_cipher_suite", 3, "ssl_cipher_suite 'old' (TLS 1.2 is the minimum) is not supported")),
    ("custom without ciphers", HEAD + "gateway:\n  ssl_cipher_suite: custom\n",
     ("gateway", 2, "ssl_cipher_suite 'custom' needs ssl_ciphers")),
    ("ciphers without custom", HEAD + "gateway:\n  ssl_ciphers: ECDHE-RSA-AES128-GCM-SHA256\n",
     ("gateway", 2, "ssl_ciphers is only used with ssl_cipher_suite: custom")),
    ("unknown ciphers", HEAD + "gateway:\n  ssl_cipher_suite: custom\n  ssl_ciphers: NOPE-CIPHER\n",
     ("gateway.ssl_ciphers", 4, "no cipher in 'NOPE-CIPHER' is known to OpenSSL")),
]


@pytest.mark.parametrize("text, expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error(text: str, expected: tuple) -> None:
    path, line, message = one_issue(text)
    assert (path, line) == expected[:2]
    assert expected[2] in message, message
    assert "PRIVATE KEY" not in message


def test_every_problem_is_reported_at_once() -> None:
    found = issues(HEAD + "certificates:\n" + cert_yaml(key_pem=WRONG_KEY, snis="[a.test, '1.2.3.4']")
                   + "snis:\n- name: x.test\n  certificate: {id: 66666666-6666-4666-8666-666666666666}\n")
    assert [(p, line) for p, line, _ in found] == [
        ("certificates[0].key", 4), ("certificates[0].snis[1].name", 5), ("snis[0].certificate", 8)]


def test_load_data_reports_tls_errors_too() -> None:
    with pytest.raises(ConfigError) as exc:
        load_data({"_format_version": "3.0", "certificates": [{"cert": A.cert_pem, "key": B.key_pem}]})
    assert [str(i) for i in exc.value.issues] == ["<data>: certificates[0].key: certificate does not match key"]


# ---------------------------------------------------------------------------------------------------------------------
# Which certificate serves which name
# ---------------------------------------------------------------------------------------------------------------------


def test_sni_candidates_follow_kong() -> None:
    assert sni_candidates("api.example.com") == ["api.example.com", "*.example.com", "api.example.*", "*"]
    assert sni_candidates("example.com") == ["example.com", "example.*", "*"]  # '*.com' is never a candidate
    assert sni_candidates("localhost") == ["localhost", "*"]
    assert sni_candidates("a.b.example.com")[1] == "*.b.example.com"  # one label only


def _tls_config(snis_by_cert: dict[str, list[str]], gateway: str = "") -> str:
    certs = {"a": A, "b": B, "rsa": RSA}
    text = HEAD + "certificates:\n"
    for name, snis in snis_by_cert.items():
        text += cert_yaml(certs[name], snis=json.dumps(snis))
    return text + 'gateway:\n  listen: ["127.0.0.1:0 ssl"]\n' + gateway


def test_select_order_exact_prefix_suffix_catchall_default() -> None:
    loaded = load(_tls_config({"a": ["a.test", "*.wild.test"], "b": ["x.wild.test", "shop.*"], "rsa": ["*"]}))
    tls = build_server_tls(loaded.config)
    a, b, catch_all = tls.by_name["a.test"], tls.by_name["x.wild.test"], tls.by_name["*"]
    assert tls.by_name["*.wild.test"] is a and tls.by_name["shop.*"] is b
    cases = {
        "a.test": a, "A.TEST.": a, "y.wild.test": a, "x.wild.test": b, "shop.example": b,
        "a.b.wild.test": catch_all, "unknown.test": catch_all, None: tls.default, "": tls.default,
    }
    for name, ctx in cases.items():
        assert tls.select(name) is ctx, name
    assert tls.default is not a and tls.default not in tls.by_name.values()


def test_runtime_has_tls_only_with_an_https_listener() -> None:
    assert compile_runtime(load(HEAD + "certificates:\n" + cert_yaml())).tls is None
    rt = compile_runtime(load(_tls_config({"a": ["a.test"]}, "  ssl_cipher_suite: modern\n")))
    import ssl

    assert rt.tls.settings.min_version == ssl.TLSVersion.TLSv1_3 and rt.tls.settings.ciphers is None
    rt = compile_runtime(load(_tls_config({"a": ["a.test"]})))
    assert (rt.tls.settings.min_version, rt.tls.settings.max_version) == (ssl.TLSVersion.TLSv1_2,
                                                                          ssl.TLSVersion.TLSv1_3)
    assert rt.tls.by_name["a.test"].minimum_version == ssl.TLSVersion.TLSv1_2


# ---------------------------------------------------------------------------------------------------------------------
# Upstream TLS: compiled settings and pools
# ---------------------------------------------------------------------------------------------------------------------


def test_upstream_tls_settings_are_shared_and_targets_get_their_sni() -> None:
    ca_id = str(uuid.uuid4())
    rt = compile_runtime(load(HEAD + f"""
ca_certificates: [{{id: {ca_id}, cert: {q(CA.cert_pem)}}}]
upstreams:
- name: up
  host_header: API.example.test:8443
  targets: [{{target: "10.0.0.1:8443"}}]
services:
- {{name: a, url: https://Backend.Test:8443, tls_verify: true, ca_certificates: [{ca_id}]}}
- {{name: b, url: https://other.test, tls_verify: true, ca_certificates: [{ca_id}]}}
- {{name: c, url: https://other.test}}
- {{name: d, protocol: https, host: up}}
- {{name: e, url: http://other.test}}
"""))
    a, b, c, d, e = (s.balancer.targets[0] for s in rt.services)
    assert a.tls is b.tls and a.tls.verify and a.tls.depth == 1  # nginx's default depth
    assert c.tls is not a.tls and not c.tls.verify and c.tls.key != a.tls.key
    assert (a.sni, b.sni, d.sni) == ("backend.test", "other.test", "api.example.test")
    assert d.host_header == b"API.example.test:8443"
    assert e.tls is None and e.sni == ""


def test_pools_are_keyed_by_tls_settings_and_sni() -> None:
    rt = compile_runtime(load(HEAD + "services:\n- {name: a, url: 'https://10.0.0.1:8443'}\n"
                                     "- {name: b, url: 'https://10.0.0.1:8443', tls_verify: true}\n"
                                     "- {name: c, url: 'http://10.0.0.1:8443'}\n"))
    ta, tb, tc = (s.balancer.targets[0] for s in rt.services)
    pools = Pools()
    pa, pb, pc = pools.for_tls(ta, "10.0.0.1", ""), pools.for_tls(tb, "10.0.0.1", ""), pools.for_target(tc)
    assert len({id(pa), id(pb), id(pc)}) == 3
    assert pc.tls is None and pa.tls is ta.tls and pa.sni == "10.0.0.1"
    assert pools.for_tls(ta, "10.0.0.1", "") is pa and ta.pool is pa  # remembered on the target
    preserved = pools.for_tls(ta, "10.0.0.1", "Client.Example:8443")
    assert preserved is not pa and preserved.sni == "client.example"
    assert pools.for_tls(ta, "10.0.0.1", "client.example") is preserved
    named = Target(host="svc.test", port=443, tls=ta.tls, sni="svc.test")
    assert pools.for_tls(named, "10.0.0.9", "") is pools.get("10.0.0.9", 443, ta.tls, "svc.test")


@pytest.mark.parametrize("value, name", [("a.test", "a.test"), ("A.test:8443", "a.test"), ("[::1]:8443", "::1"),
                                         ("[::1]", "::1"), ("10.0.0.1:80", "10.0.0.1"), ("host:", "host:")])
def test_host_name(value: str, name: str) -> None:
    assert host_name(value) == name


# ---------------------------------------------------------------------------------------------------------------------
# Route protocols (Kong 3.x): https requests skip http-only routes
# ---------------------------------------------------------------------------------------------------------------------


def test_router_by_scheme() -> None:
    both = RouteEntry(name="both", paths=("/",), index=0)
    assert isinstance(build_router([both]), Router)  # nothing http-only: no second router, no cost
    plain = RouteEntry(name="plain", protocols=frozenset({"http"}), paths=("/p",), index=1)
    secure = RouteEntry(name="secure", protocols=frozenset({"https"}), paths=("/s",), index=2)
    r = build_router([both, plain, secure])
    assert isinstance(r, SchemeRouter)
    assert r.match("GET", "h", "/p/x", "http").route.name == "plain"
    assert r.match("GET", "h", "/p/x", "https").route.name == "both"  # the http-only route is skipped
    assert r.match("GET", "h", "/s", "http").route.name == "secure"  # matched; the proxy answers 426 / redirects
    assert r.match("GET", "h", "/s", "https").route.name == "secure"
    only = build_router([plain])
    assert only.match("GET", "h", "/p", "https") is None and only.match("GET", "h", "/p", "http") is not None


# ---------------------------------------------------------------------------------------------------------------------
# The listener context follows the current runtime (a reload) without reopening the socket
# ---------------------------------------------------------------------------------------------------------------------


def test_listener_context_follows_the_current_runtime() -> None:
    """uvloop creates each connection's TLS object from the listener's context (``wrap_bio``): protocol versions
    and certificates come from whatever runtime is current then."""
    import asyncio
    import socket
    import ssl
    import threading

    import uvloop

    from gwanmun.tls import listener_context
    from tests.fixtures.certs import client_context, common_name, handshake

    def runtime_tls(extra: str, snis: dict[str, list[str]]):
        return compile_runtime(load(_tls_config(snis, extra))).tls

    first = runtime_tls("", {"a": ["a.test"]})
    second = runtime_tls("  ssl_cipher_suite: modern\n", {"b": ["a.test"]})  # TLS 1.3 only, another certificate
    current = [first]
    assert listener_context("127.0.0.1:0", lambda: current[0]) is None  # no "ssl" flag: plain HTTP
    ctx = listener_context("127.0.0.1:0 ssl", lambda: current[0])
    loop = uvloop.new_event_loop()
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = loop.run_until_complete(loop.create_server(asyncio.Protocol, sock=sock, ssl=ctx))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        tls12 = client_context(max_version=ssl.TLSVersion.TLSv1_2)
        assert common_name(handshake("127.0.0.1", port, "a.test", tls12)) == "a.test"
        current[0] = second
        with pytest.raises(ssl.SSLError):
            handshake("127.0.0.1", port, "a.test", tls12)
        assert common_name(handshake("127.0.0.1", port, "a.test")) == "b.test"
        current[0] = first
        assert common_name(handshake("127.0.0.1", port, "a.test", tls12)) == "a.test"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
