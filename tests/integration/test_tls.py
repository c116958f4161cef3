"""TLS end to end: HTTPS listeners (certificate by SNI, Kong's wildcard rules, default certificate, TLS 1.2 minimum),
route protocols (426 and redirects, https-only and http-only routes), and TLS to upstreams (verification, depth,
mutual TLS, SNI, pools kept apart by TLS settings).

Certificates are generated per session (``pki`` fixture); the gateway runs as a real process with real sockets.
"""

from __future__ import annotations

import socket
import ssl
import threading
import uuid

import pytest

from tests.fixtures.certs import client_context, common_name, handshake, tls_raw
from tests.fixtures.gateway import Gateway
from tests.fixtures.rawhttp import RawConnection


def _id() -> str:
    return str(uuid.uuid4())


def tls_address(gw: Gateway, index: int = 1) -> tuple[str, int]:
    host, port = gw.addresses[index].rsplit(":", 1)
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------------------------------------------------------------
# An HTTPS listener with several certificates, and route protocols
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(pki):
    return {
        "a": pki.root.issue("a.test"),
        "wild": pki.root.issue("*.wild.test", cn="wildcard *.wild.test"),
        "exact": pki.root.issue("x.wild.test", cn="exact x.wild.test"),
        "suffix": pki.root.issue("suffix.com", "suffix.org", cn="suffix suffix.*"),
        "default": pki.root.issue("default.test", cn="configured default"),
        "rsa": pki.root.issue("dual.test", key="rsa", cn="dual rsa"),
        "ecdsa": pki.root.issue("dual.test", cn="dual ecdsa"),
    }


@pytest.fixture(scope="module")
def tls_gw_config(certs, scripted, tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-default")
    crt, key = certs["default"].write(d, "default")
    exact_id = _id()
    https_only = [{"name": "secure", "paths": ["/secure"], "protocols": ["https"]}]
    https_only += [
        {"name": f"r{code}", "paths": [f"/r{code}"], "protocols": ["https"], "https_redirect_status_code": code}
        for code in (301, 302, 307, 308)
    ]
    return {
        "_format_version": "3.0",
        "services": [{
            "name": "echo", "url": scripted.url,
            "routes": [
                {"name": "open", "paths": ["/open"], "strip_path": False},
                {"name": "plainonly", "paths": ["/plainonly"], "protocols": ["http"], "strip_path": False},
                *https_only,
            ],
        }],
        "certificates": [
            {"cert": certs["a"].cert_pem, "key": certs["a"].key_pem, "snis": ["a.test"]},
            {"cert": certs["wild"].cert_pem, "key": certs["wild"].key_pem, "snis": [{"name": "*.wild.test"}]},
            {"id": exact_id, "cert": certs["exact"].cert_pem, "key": certs["exact"].key_pem},
            {"cert": certs["suffix"].cert_pem, "key": certs["suffix"].key_pem, "snis": ["suffix.*"]},
            {"cert": certs["rsa"].cert_pem, "key": certs["rsa"].key_pem,
             "cert_alt": certs["ecdsa"].cert_pem, "key_alt": certs["ecdsa"].key_pem, "snis": ["dual.test"]},
        ],
        "snis": [{"name": "x.wild.test", "certificate": {"id": exact_id}}],
        "gateway": {
            "listen": ["127.0.0.1:0", "127.0.0.1:0 ssl"],
            "ssl_cert": str(crt),
            "ssl_cert_key": str(key),
        },
    }


@pytest.fixture
def tls_gw(shared_gateway, tls_gw_config) -> Gateway:
    return shared_gateway(tls_gw_config)


SNI_CASES = [
    # sni sent, common name of the certificate served
    ("a.test", "a.test"),
    ("A.Test", "a.test"),  # names compare case-insensitively
    ("x.wild.test", "exact x.wild.test"),  # an exact name beats the wildcard
    ("y.wild.test", "wildcard *.wild.test"),
    ("a.b.wild.test", "configured default"),  # '*.wild.test' covers one label only (Kong)
    ("wild.test", "configured default"),
    ("suffix.org", "suffix suffix.*"),
    ("suffix.com", "suffix suffix.*"),
    ("www.suffix.com", "configured default"),  # 'suffix.*' replaces the last label only
    ("nothing.test", "configured default"),
    (None, "configured default"),  # no SNI at all
]


@pytest.mark.parametrize("sni, cn", SNI_CASES, ids=[str(s) for s, _ in SNI_CASES])
def test_certificate_chosen_by_sni(tls_gw, sni, cn):
    host, port = tls_address(tls_gw)
    assert common_name(handshake(host, port, sni)) == cn


def test_served_certificate_verifies_against_its_ca(tls_gw, pki):
    host, port = tls_address(tls_gw)
    ctx = client_context(verify_ca=pki.root.cert_pem)
    assert common_name(handshake(host, port, "a.test", ctx)) == "a.test"
    with pytest.raises(ssl.SSLCertVerificationError):  # the wildcard does not cover a.test
        handshake(host, port, "a.b.wild.test", client_context(verify_ca=pki.other.cert_pem))


def test_alternate_certificate_is_chosen_by_key_type(tls_gw):
    """``cert_alt``/``key_alt``: an RSA and an ECDSA certificate for the same names; the client's signature
    algorithms decide."""
    host, port = tls_address(tls_gw)
    rsa_only = client_context(ciphers="ECDHE-RSA-AES128-GCM-SHA256", max_version=ssl.TLSVersion.TLSv1_2)
    ecdsa_only = client_context(ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", max_version=ssl.TLSVersion.TLSv1_2)
    assert common_name(handshake(host, port, "dual.test", rsa_only)) == "dual rsa"
    assert common_name(handshake(host, port, "dual.test", ecdsa_only)) == "dual ecdsa"


def _tls11_client() -> ssl.SSLContext:
    import warnings

    ctx = client_context(ciphers="DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: that is the point
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


def test_tls11_client_is_refused(tls_gw, pki, certs):
    # Control: this client does speak TLS 1.1 to a server that allows it (so the refusal below is the gateway's).
    server_ctx = pki.root.server_context(certs["a"])
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    lsock = socket.create_server(("127.0.0.1", 0))
    versions: list[str] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                versions.append(s.version() or "")
        except ssl.SSLError as e:  # pragma: no cover - reported through the assertion below
            versions.append(repr(e))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with socket.create_connection(lsock.getsockname()) as raw, _tls11_client().wrap_socket(raw) as s:
        assert s.version() == "TLSv1.1"
    t.join(5)
    lsock.close()
    assert versions == ["TLSv1.1"]

    host, port = tls_address(tls_gw)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        handshake(host, port, "a.test", _tls11_client())
    tls12 = client_context(max_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((host, port), timeout=5) as raw, tls12.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.version() == "TLSv1.2"
        assert s.selected_alpn_protocol() is None  # the client offered none


def test_alpn_offers_http11_only(tls_gw):
    host, port = tls_address(tls_gw)
    ctx = client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_https_only_route_over_tls_is_proxied_as_https(tls_gw, scripted, token):
    host, port = tls_address(tls_gw)
    with tls_raw(host, port, "a.test") as c:
        c.request("GET", f"/secure/echo?t={token}", host="a.test")
        r = c.read_response()
        assert r.status == 200
        c.request("GET", f"/open/echo?t={token}", host="a.test")  # keep-alive over TLS
        assert c.read_response().status == 200
    first, second = scripted.wait_request(token, 2)
    for rec in (first, second):
        assert rec.header("x-forwarded-proto") == "https"
        assert rec.header("x-forwarded-port") == str(port)
        assert rec.header("x-forwarded-host") == "a.test"


def test_plain_listener_still_forwards_http(tls_gw, scripted, token):
    r = _plain(tls_gw, f"/open/echo?t={token}")
    assert r.status == 200
    assert scripted.request_for(token).header("x-forwarded-proto") == "http"


def _plain(gw: Gateway, target: str, host: str = "example.test:8000", headers=None, method: str = "GET"):
    with RawConnection(gw.host, gw.port) as c:
        c.request(method, target, headers or [], host=host)
        return c.read_response(method)


def test_https_only_route_over_http_is_426(tls_gw, scripted, token):
    r = _plain(tls_gw, f"/secure/echo?t={token}")
    assert r.status == 426
    assert r.json()["message"] == "Please use HTTPS protocol" and r.json()["request_id"]
    assert r.header("upgrade") == "TLS/1.2, HTTP/1.1"  # Kong's headers
    assert "upgrade" in r.connection_tokens()
    assert r.header("x-request-id") == r.json()["request_id"]
    assert not scripted.find(token)  # never forwarded in clear


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_https_only_route_redirects(tls_gw, scripted, token, code):
    r = _plain(tls_gw, f"/r{code}/some/path?t={token}&x=%20y", host="Shop.Example.test:8000")
    assert r.status == code
    # Kong: "https://" .. $host .. $request_uri: the Host without its port, lower-cased (nginx), the target as sent
    assert r.header("location") == f"https://shop.example.test/r{code}/some/path?t={token}&x=%20y"
    assert r.body == b"" and r.header("content-length") == "0"
    assert not scripted.find(token)


def test_redirect_keeps_the_connection(tls_gw):
    with RawConnection(tls_gw.host, tls_gw.port) as c:
        c.request("GET", "/r301/a", host="h.test")
        assert c.read_response().status == 301
        c.request("HEAD", "/r308/b", host="h.test")
        r = c.read_response("HEAD")
        assert r.status == 308 and r.header("location") == "https://h.test/r308/b"
        c.request("GET", "/secure/x", host="h.test")
        assert c.read_response().status == 426


def test_http_only_route_is_not_matched_over_tls(tls_gw, scripted, token):
    """Kong 3.x: an https request does not match a route whose only protocol is http."""
    host, port = tls_address(tls_gw)
    with tls_raw(host, port, "a.test") as c:
        c.request("GET", f"/plainonly/echo?t={token}", host="a.test")
        r = c.read_response()
    assert r.status == 404
    assert _plain(tls_gw, f"/plainonly/echo?t={token}").status == 200
    assert len(scripted.find(token)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# TLS to upstreams
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_gw_config(pki, scripted_tls, scripted_tls_chain, scripted_mtls, scripted):
    root_id, other_id, client_id = _id(), _id(), _id()

    def upstream(name: str, port: int, host_header: str, **kw) -> dict:
        return {"name": name, "host_header": host_header, "targets": [{"target": f"127.0.0.1:{port}"}], **kw}

    def svc(name: str, host: str, route: dict | None = None, **kw) -> dict:
        return {"name": name, "protocol": "https", "host": host, "retries": 0,
                "routes": [{"name": name, "paths": [f"/{name}"], **(route or {})}], **kw}

    return {
        "_format_version": "3.0",
        "ca_certificates": [{"id": root_id, "cert": pki.root.cert_pem},
                            {"id": other_id, "cert": pki.other.cert_pem}],
        "certificates": [{"id": client_id, "cert": pki.client.cert_pem, "key": pki.client.key_pem}],
        "upstreams": [
            upstream("tls-up", scripted_tls.port, "upstream.test"),
            upstream("chain-up", scripted_tls_chain.port, "chain.test"),
            upstream("mtls-up", scripted_mtls.port, "upstream.test"),
            upstream("mtls-up-cert", scripted_mtls.port, "upstream.test", client_certificate={"id": client_id}),
        ],
        "services": [
            svc("good", "tls-up", tls_verify=True, ca_certificates=[root_id]),
            svc("wrongca", "tls-up", tls_verify=True, ca_certificates=[other_id]),
            svc("noverify", "tls-up", ca_certificates=[other_id]),  # tls_verify unset: off, as in Kong
            svc("ip", f"127.0.0.1", port=scripted_tls.port, tls_verify=True, ca_certificates=[root_id]),
            svc("preserve", "tls-up", {"preserve_host": True}, tls_verify=True, ca_certificates=[root_id]),
            svc("chain", "chain-up", tls_verify=True, ca_certificates=[root_id]),  # depth 1 by default
            svc("depth0", "chain-up", tls_verify=True, tls_verify_depth=0, ca_certificates=[root_id]),
            svc("mtls", "mtls-up", client_certificate={"id": client_id}),
            svc("nomtls", "mtls-up"),
            svc("mtlsfallback", "mtls-up-cert"),  # the upstream's client_certificate (Kong's fallback)
            {"name": "plain", "url": scripted.url, "routes": [
                {"name": "plain", "paths": ["/plain"]},
                {"name": "behind-proxy", "paths": ["/behind-proxy"], "protocols": ["https"],
                 "https_redirect_status_code": 301},
            ]},
        ],
        "gateway": {"listen": ["127.0.0.1:0", "127.0.0.1:0 ssl"], "upstream_keepalive_pool_size": 16,
                    "trusted_ips": ["127.0.0.1/32"]},  # only /behind-proxy relies on this
    }


@pytest.fixture
def up_gw(shared_gateway, upstream_gw_config) -> Gateway:
    return shared_gateway(upstream_gw_config)


def test_generated_default_certificate(up_gw):
    """No certificates and no ssl_cert: a self-signed certificate made at start (as Kong's kong-default.crt)."""
    host, port = tls_address(up_gw)
    cert = handshake(host, port, None)
    assert common_name(cert) == "localhost"
    assert cert.issuer == cert.subject
    assert common_name(handshake(host, port, "anything.test")) == "localhost"


OK_CASES = [
    # path, upstream fixture, expected SNI, expected client certificate CN
    ("good", "scripted_tls", "upstream.test", None),
    ("noverify", "scripted_tls", "upstream.test", None),
    ("ip", "scripted_tls", None, None),  # an IP is verified against the certificate's IPs, and sent without SNI
    ("chain", "scripted_tls_chain", "chain.test", None),
    ("mtls", "scripted_mtls", "upstream.test", "gateway-client"),
    ("mtlsfallback", "scripted_mtls", "upstream.test", "gateway-client"),
]


@pytest.mark.parametrize("path, upstream, sni, client_cn", OK_CASES, ids=[c[0] for c in OK_CASES])
def test_upstream_tls(up_gw, request, token, path, upstream, sni, client_cn):
    server = request.getfixturevalue(upstream)
    r = up_gw.request("GET", f"/{path}/echo?t={token}")
    assert r.status == 200, r.body
    rec = server.request_for(token)
    assert rec.sni == sni
    assert rec.client_cn == client_cn
    assert rec.header("host") == f"{sni or '127.0.0.1'}:{server.port}"  # SNI: the Host without its port (nginx)


FAIL_CASES = [
    ("wrongca", "the upstream's certificate is not signed by a trusted CA"),
    ("depth0", "one intermediate CA, tls_verify_depth 0"),
    ("nomtls", "the upstream requires a client certificate"),
]


@pytest.mark.parametrize("path, why", FAIL_CASES, ids=[c[0] for c in FAIL_CASES])
def test_upstream_tls_failure_is_502(up_gw, token, path, why):
    r = up_gw.request("GET", f"/{path}/echo?t={token}")
    assert r.status == 502, why
    entry = up_gw.log_for(r.json()["request_id"])
    assert entry["status"] == 502


def test_preserve_host_is_the_upstream_sni(up_gw, scripted_tls, token):
    """Kong sends the Host it sends upstream as SNI (proxy_ssl_name $upstream_host): with preserve_host, the client's
    Host, without its port; it is also the name verified."""
    with RawConnection(up_gw.host, up_gw.port) as c:
        c.request("GET", f"/preserve/echo?t={token}", host="Alias.Test:8443")
        assert c.read_response().status == 200
        c.request("GET", f"/preserve/echo?t={token}x", host="not-in-the-cert.test")
        assert c.read_response().status == 502  # verification against the client's name fails
    rec = scripted_tls.request_for(token)
    assert rec.sni == "alias.test" and rec.header("host") == "Alias.Test:8443"


def test_pools_are_kept_apart_by_tls_settings(up_gw, scripted_tls, token):
    """'noverify' and 'wrongca' reach the same address: a connection made without verification must never be reused
    by the service that verifies (and fails)."""
    with RawConnection(up_gw.host, up_gw.port) as c:
        for i in range(3):
            c.request("GET", f"/noverify/echo?t={token}", host="x.test")
            assert c.read_response().status == 200
        c.request("GET", f"/wrongca/echo?t={token}", host="x.test")
        assert c.read_response().status == 502
        c.request("GET", f"/good/echo?t={token}", host="x.test")
        assert c.read_response().status == 200
    recs = scripted_tls.wait_request(token, 4)
    assert len({r.conn_id for r in recs[:3]}) == 1  # the unverified connection was kept alive and reused
    assert recs[3].conn_id != recs[0].conn_id  # 'good' did not get it either


def test_plain_service_next_to_tls_services(up_gw, scripted, token):
    assert up_gw.request("GET", f"/plain/echo?t={token}").status == 200
    assert scripted.request_for(token).sni is None


def test_redirect_behind_a_trusted_proxy(up_gw, scripted, token):
    """From a trusted client (Kong's trusted_ips): X-Forwarded-Proto https means the client spoke https to the proxy
    in front, so the request is proxied; X-Forwarded-Host, as sent, is where a redirect goes."""
    r = _plain(up_gw, f"/behind-proxy/echo?t={token}", host="inner.test",
               headers=[("X-Forwarded-Proto", "https")])
    assert r.status == 200
    assert scripted.request_for(token).header("x-forwarded-proto") == "https"
    r = _plain(up_gw, "/behind-proxy/x?y=1", host="inner.test", headers=[("X-Forwarded-Host", "Public.Example:8443")])
    assert r.status == 301 and r.header("location") == "https://Public.Example:8443/behind-proxy/x?y=1"
    r = _plain(up_gw, "/behind-proxy/x", host="inner.test:8000", headers=[("X-Forwarded-Proto", "http")])
    assert r.status == 301 and r.header("location") == "https://inner.test/behind-proxy/x"
