"""What the upstream learns about the client: ``X-Forwarded-For/-Proto/-Host/-Port``, ``Via``, ``Host``, and the
request target, byte for byte.

A client's own ``X-Forwarded-*`` and ``Forwarded`` are only believed from ``gateway.trusted_ips``; from anyone else
they are replaced by what the gateway saw.
"""

from __future__ import annotations

import re

import pytest

from tests.fixtures.gateway import route, service, single_service
from tests.fixtures.rawhttp import RawConnection

VIA_RE = re.compile(r"^1\.1 [!-~]+$")

SPOOF = [
    ("X-Forwarded-For", "1.2.3.4"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "public.example"),
    ("X-Forwarded-Port", "443"),
    ("Forwarded", "for=1.2.3.4;proto=https;host=public.example"),
]


def _get(gw, target, headers, host="example.test"):
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", target, headers, host=host)
        return c.read_response()


@pytest.fixture
def untrusted_gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def elsewhere_trusted_gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all",
                                         gateway={"trusted_ips": ["10.0.0.0/8", "192.168.0.0/16"]}))


@pytest.fixture
def trusted_gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all",
                                         gateway={"trusted_ips": ["127.0.0.1/32"]}))


def _assert_single(rec, name):
    vals = rec.header_all(name)
    assert len(vals) == 1, f"{name} sent {len(vals)} times upstream: {vals}"
    return vals[0]


def test_forwarded_headers_added(untrusted_gw, scripted, token):
    r = _get(untrusted_gw, f"/echo?t={token}", [], host="example.test:8080")
    assert r.status == 200
    rec = scripted.request_for(token)
    assert _assert_single(rec, "x-forwarded-for") == "127.0.0.1"
    assert _assert_single(rec, "x-forwarded-proto") == "http"
    xfh = _assert_single(rec, "x-forwarded-host")
    assert xfh in ("example.test", "example.test:8080")
    assert _assert_single(rec, "x-forwarded-port") == str(untrusted_gw.port)


@pytest.mark.parametrize("which", ["untrusted_gw", "elsewhere_trusted_gw"])
def test_client_forwarded_headers_ignored_when_untrusted(request, scripted, token, which):
    gw = request.getfixturevalue(which)
    r = _get(gw, f"/echo?t={token}", SPOOF)
    assert r.status == 200
    rec = scripted.request_for(token)
    assert _assert_single(rec, "x-forwarded-for") == "127.0.0.1"
    assert _assert_single(rec, "x-forwarded-proto") == "http"
    assert _assert_single(rec, "x-forwarded-host") == "example.test"
    assert _assert_single(rec, "x-forwarded-port") == str(gw.port)
    for v in rec.header_all("forwarded"):
        assert "1.2.3.4" not in v and "public.example" not in v, f"untrusted Forwarded kept: {v!r}"


def test_client_forwarded_headers_kept_when_trusted(trusted_gw, scripted, token):
    r = _get(trusted_gw, f"/echo?t={token}", SPOOF)
    assert r.status == 200
    rec = scripted.request_for(token)
    assert _assert_single(rec, "x-forwarded-for") == "1.2.3.4, 127.0.0.1"
    assert _assert_single(rec, "x-forwarded-proto") == "https"
    assert _assert_single(rec, "x-forwarded-host") == "public.example"
    assert _assert_single(rec, "x-forwarded-port") == "443"
    assert any("for=1.2.3.4" in v for v in rec.header_all("forwarded")), rec.headers


def test_xff_chain_appended_when_trusted(trusted_gw, scripted, token):
    r = _get(trusted_gw, f"/echo?t={token}", [("X-Forwarded-For", "203.0.113.9, 10.1.1.1")])
    assert r.status == 200
    rec = scripted.request_for(token)
    assert _assert_single(rec, "x-forwarded-for") == "203.0.113.9, 10.1.1.1, 127.0.0.1"


def test_via_added_to_request(untrusted_gw, scripted, token):
    _get(untrusted_gw, f"/echo?t={token}&a=1", [])
    via = scripted.request_for(token).header_all("via")
    assert len(via) == 1 and VIA_RE.match(via[0]), f"Via upstream: {via}"
    tok2 = token + "b"
    _get(untrusted_gw, f"/echo?t={tok2}", [("Via", "1.0 fred, 1.1 p.example (Apache/1.1)")])
    via2 = ", ".join(scripted.request_for(tok2).header_all("via"))
    assert via2.startswith("1.0 fred, 1.1 p.example (Apache/1.1), "), f"client's Via not kept in front: {via2!r}"
    assert VIA_RE.match(via2.rsplit(", ", 1)[1])


def test_via_added_to_response(untrusted_gw, token):
    r = _get(untrusted_gw, f"/echo?t={token}", [])
    via = r.header_all("via")
    assert len(via) == 1 and VIA_RE.match(via[0]), f"Via in response: {via}"
    r2 = _get(untrusted_gw, f"/respond?t={token}&h=Via:1.1%20cache.example", [])
    via2 = ", ".join(r2.header_all("via"))
    assert via2.startswith("1.1 cache.example, "), f"upstream's Via not kept in front: {via2!r}"


def test_host_set_to_upstream(untrusted_gw, scripted, token):
    _get(untrusted_gw, f"/echo?t={token}", [], host="client.example:9999")
    rec = scripted.request_for(token)
    assert rec.header_all("host") == [scripted.hostport]


def test_preserve_host(shared_gateway, scripted, token):
    gw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all",
                                       route_kw={"preserve_host": True}))
    _get(gw, f"/echo?t={token}", [], host="client.example:9999")
    rec = scripted.request_for(token)
    assert rec.header_all("host") == ["client.example:9999"]


@pytest.mark.parametrize("target", [
    "/echo?x=%20&y=1&y=2&z",
    "/a%2Fb/c%3F/echo?q=%E2%9C%93&empty=&plus=a+b",
    "/UPPER/lower/echo?Case=Sensitive",
    "/x;matrix=1/echo?a=b=c",
])
def test_target_forwarded_byte_for_byte(untrusted_gw, scripted, token, target):
    full = f"{target}&t={token}"
    r = _get(untrusted_gw, full, [])
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.target == full


def test_strip_path(shared_gateway, scripted, token):
    cfg = {"services": [service("scripted", scripted.url, [route("api", ["/api"])])]}  # strip_path defaults to true
    gw = shared_gateway(cfg)
    r = _get(gw, f"/api/echo?t={token}&k=v", [])
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.target == f"/echo?t={token}&k=v"
    # Kong: the stripped prefix and the original path travel in X-Forwarded-Prefix / X-Forwarded-Path
    assert rec.header_all("x-forwarded-prefix") == ["/api"]
    assert rec.header_all("x-forwarded-path") == ["/api/echo"]


def test_service_path_prefix(shared_gateway, scripted, token):
    cfg = {"services": [service("scripted", scripted.url + "/base", [route("api", ["/api"])])]}
    gw = shared_gateway(cfg)
    r = _get(gw, f"/api/echo?t={token}", [])
    assert r.status == 200
    assert scripted.request_for(token).target == f"/base/echo?t={token}"


def test_absolute_form_target(untrusted_gw, scripted, token):
    """RFC 9112 §3.2.2: a server must accept the absolute form; the upstream gets the origin form."""
    with RawConnection(untrusted_gw.host, untrusted_gw.port) as c:
        c.send(f"GET http://example.test/echo?t={token}&abs=1 HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
        r = c.read_response()
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.target == f"/echo?t={token}&abs=1"
    assert rec.header("x-forwarded-host") == "example.test"


def test_real_ip_and_logged_client_from_trusted_chain(trusted_gw, scripted, token):
    """From a trusted proxy, the client is the right-most X-Forwarded-For entry that is not itself trusted."""
    r = _get(trusted_gw, f"/echo?t={token}", [("X-Forwarded-For", "203.0.113.7, 127.0.0.1")])
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.header_all("x-real-ip") == ["203.0.113.7"]
    assert trusted_gw.log_for(r.header("x-request-id"))["client_ip"] == "203.0.113.7"


def test_real_ip_and_logged_client_untrusted(untrusted_gw, scripted, token):
    r = _get(untrusted_gw, f"/echo?t={token}", [("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "203.0.113.8")])
    rec = scripted.request_for(token)
    assert rec.header_all("x-real-ip") == ["127.0.0.1"]
    assert untrusted_gw.log_for(r.header("x-request-id"))["client_ip"] == "127.0.0.1"
