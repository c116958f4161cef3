"""Config layer: value rules (Kong's host/path/name rules, PCRE -> Python regexes, gateway settings)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from gwanmun.config import (
    RegexError,
    RouteConfig,
    ServiceConfig,
    TargetConfig,
    UpstreamConfig,
    compile_header_regex,
    compile_path_regex,
    parse_host_port,
    translate_regex,
)
from gwanmun.config.model import GatewayConfig

# ----------------------------------------------------------------------------------------------------------------
# Regexes
# ----------------------------------------------------------------------------------------------------------------

TRANSLATIONS = [
    (r"/items/(?<id>\d+)", r"/items/(?P<id>\d+)"),
    (r"/(?'a'x)(?<b_2>y)", r"/(?P<a>x)(?P<b_2>y)"),
    (r"(?<=/v1)/x(?<!y)", r"(?<=/v1)/x(?<!y)"),  # lookbehinds untouched
    (r"(?<w>\w)\k<w>\k'w'\k{w}", r"(?P<w>\w)(?P=w)(?P=w)(?P=w)"),
    (r"[(?<x>)]", r"[(?<x>)]"),  # inside a character class, nothing is a group
    (r"\(?<x>", r"\(?<x>"),  # escaped paren
    (r"[[:digit:]]+[^[:space:]]", r"[0-9]+[^\s]"),
    (r"/end\z", r"/end\Z"),
    (r"[]a](?<n>b)", r"[\]a](?P<n>b)"),
    (r"/a(?:b|c)*+", r"/a(?:b|c)*+"),  # possessive quantifiers exist in Python 3.11
    (r"/(?P<py>x)", r"/(?P<py>x)"),  # already Python syntax
]


@pytest.mark.parametrize("pcre, python", TRANSLATIONS, ids=[p for p, _ in TRANSLATIONS])
def test_translate_regex(pcre: str, python: str) -> None:
    assert translate_regex(pcre) == python


@pytest.mark.parametrize(
    "pattern",
    [r"/a(", r"/a[b", r"/a\Qx\E", r"/(?R)", r"/x(?i)y", r"(?<n>a)(?<n>b)", "\\"],
    ids=["open group", "open class", "\\Q..\\E", "recursion", "mid-pattern flags", "duplicate group", "trailing \\"],
)
def test_translate_regex_rejects(pattern: str) -> None:
    with pytest.raises(RegexError) as exc:
        translate_regex(pattern)
    assert str(exc.value).startswith(f"invalid regex '{pattern}': ")


PATH_MATCHES = [
    # route path, request path, matches?, groups
    (r"~/items/(?<id>\d+)$", "/items/42", True, {"id": "42"}),
    (r"~/items/(?<id>\d+)$", "/items/42/x", False, None),
    (r"~/items/\d+", "/items/42/x", True, {}),  # not anchored at the end
    (r"~/items/\d+", "/api/items/42", False, None),  # anchored at the start, as Kong
    (r"~/a|/b", "/x/b", False, None),  # the whole alternation is anchored
    (r"~/a|/b", "/b", True, {}),
    (r"~(?i)/Admin", "/ADMIN/x", True, {}),  # leading inline flags are kept in front of the anchor
]


@pytest.mark.parametrize("route_path, req_path, matches, groups", PATH_MATCHES,
                         ids=[f"{p} {r}" for p, r, _, _ in PATH_MATCHES])
def test_compile_path_regex(route_path: str, req_path: str, matches: bool, groups: dict | None) -> None:
    rx = compile_path_regex(route_path)
    m = rx.search(req_path)  # .search and .match agree: the pattern is anchored
    assert (m is not None) == matches
    assert (rx.match(req_path) is not None) == matches
    if matches:
        assert m.groupdict() == groups


def test_compile_path_regex_requires_tilde() -> None:
    with pytest.raises(RegexError):
        compile_path_regex("/plain")


def test_compile_header_regex_is_case_insensitive_and_unanchored() -> None:
    rx = compile_header_regex("~*^beta-(?<n>\\d)")
    assert rx.search("BETA-1").group("n") == "1"
    assert compile_header_regex("~*v2").search("api-V2-x")
    with pytest.raises(RegexError):
        compile_header_regex("plain")


# ----------------------------------------------------------------------------------------------------------------
# Hosts and addresses
# ----------------------------------------------------------------------------------------------------------------

ADDRESSES = [
    ("example.com", ("name", "example.com", None)),
    ("example.com:8080", ("name", "example.com", 8080)),
    ("my_host.internal.", ("name", "my_host.internal.", None)),
    ("10.0.0.1", ("ipv4", "10.0.0.1", None)),
    ("010.000.000.001:80", ("ipv4", "10.0.0.1", 80)),
    ("::1", ("ipv6", "::1", None)),
    ("[::1]", ("ipv6", "::1", None)),
    ("[2001:db8:0:0:0:0:0:1]:443", ("ipv6", "2001:db8::1", 443)),
]


@pytest.mark.parametrize("address, parsed", ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_parse_host_port(address: str, parsed: tuple) -> None:
    assert parse_host_port(address) == parsed


@pytest.mark.parametrize(
    "address",
    ["", "bad host", "a..b", "a-.b", ".a", "256.0.0.1", "1.2.3", "a:99999", "[::1]x", "[::1", "fe80::1%eth0",
     "1.2.3.4:", "ex@mple.com"],
)
def test_parse_host_port_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(address)


ROUTE_HOSTS = [
    ("Example.COM", "example.com"),
    ("*.example.com", "*.example.com"),
    ("example.*", "example.*"),
    ("*.example.com:8443", "*.example.com:8443"),
    ("10.0.0.1:8000", "10.0.0.1:8000"),
]


@pytest.mark.parametrize("host, stored", ROUTE_HOSTS, ids=[h for h, _ in ROUTE_HOSTS])
def test_route_hosts(host: str, stored: str) -> None:
    assert RouteConfig(hosts=[host]).hosts == [stored]


@pytest.mark.parametrize(
    "host, message",
    [
        ("*.*.example.com", "at most one wildcard"),
        ("a.*.com", "leftmost or rightmost"),
        ("*example.com", "leftmost or rightmost"),
        ("exa mple.com", "invalid hostname"),
        ("example.com:70000", "invalid port number"),
    ],
)
def test_route_hosts_rejected(host: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RouteConfig(hosts=[host])
    assert message in str(exc.value)


def test_service_host_must_not_have_port() -> None:
    with pytest.raises(ValidationError, match="must not have a port"):
        ServiceConfig(host="example.com:80")


@pytest.mark.parametrize(
    "target, address",
    [("a.internal", ("a.internal", 8000)), ("a.internal:81", ("a.internal", 81)), ("[fd00::1]:9", ("fd00::1", 9)),
     ("fd00::1", ("fd00::1", 8000)), ("127.0.0.1", ("127.0.0.1", 8000))],
)
def test_target_address(target: str, address: tuple) -> None:
    assert TargetConfig(target=target).address == address


@pytest.mark.parametrize("name", ["orders.upstream", "orders", "a-b_c"])
def test_upstream_name_ok(name: str) -> None:
    assert UpstreamConfig(name=name).name == name


@pytest.mark.parametrize(
    "name, message",
    [("10.0.0.1", "no IP addresses allowed"), ("up:80", "no port allowed"), ("up stream", "valid hostname")],
)
def test_upstream_name_rejected(name: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UpstreamConfig(name=name)


# ----------------------------------------------------------------------------------------------------------------
# Paths, methods, headers, names, tags
# ----------------------------------------------------------------------------------------------------------------

ROUTE_PATHS_OK = ["/", "/a/b", "/a/b/", "/caf%C3%A9", "/a:b@c!$&'()*+,;=", r"~/(?<x>[a-z]+)/\d{2,}$", "~/"]


@pytest.mark.parametrize("path", ROUTE_PATHS_OK)
def test_route_paths_ok(path: str) -> None:
    assert RouteConfig(paths=[path]).paths == [path]


ROUTE_PATHS_BAD = [
    ("relative", "should start with '/' (prefix) or '~/' (regex)"),
    ("~relative", "should start with '/' (prefix) or '~/' (regex)"),
    ("/a//b", "must not have empty segments"),
    ("/a/./b", "non-normalized path '/a/./b', use '/a/b' instead"),
    ("/a/%7Eb", "use '/a/~b' instead"),
    ("/a/%c3%a9", "use '/a/%C3%A9' instead"),
    ("/a%zz", "bad percent-encoding at '%zz'"),
    ("~/a(", "invalid regex '/a('"),
]


@pytest.mark.parametrize("path, message", ROUTE_PATHS_BAD, ids=[p for p, _ in ROUTE_PATHS_BAD])
def test_route_paths_rejected(path: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RouteConfig(paths=[path])
    assert message in str(exc.value)


@pytest.mark.parametrize("path, ok", [("/api/v1", True), ("api", False), ("/a b", False), ("/a//b", False)])
def test_service_path(path: str, ok: bool) -> None:
    if ok:
        assert ServiceConfig(host="h", path=path).path == path
    else:
        with pytest.raises(ValidationError):
            ServiceConfig(host="h", path=path)


def test_methods_upper_cased_and_deduplicated() -> None:
    assert RouteConfig(methods=["get", "GET", "Post", "PURGE"]).methods == ["GET", "POST", "PURGE"]
    with pytest.raises(ValidationError, match="must contain only letters"):
        RouteConfig(methods=["GET-X"])


def test_headers_lower_cased_and_checked() -> None:
    assert RouteConfig(headers={"X-Version": ["v1"]}).headers == {"x-version": ["v1"]}
    for headers, message in [
        ({"x version": ["a"]}, "invalid header name 'x version'"),
        ({"X-A": ["1"], "x-a": ["2"]}, "header 'x-a' is listed twice"),
        ({"x-a": []}, "must list at least one value"),
        ({"HOST": ["a"]}, "cannot contain 'host' header"),
    ]:
        with pytest.raises(ValidationError) as exc:
            RouteConfig(headers=headers)
        assert message in str(exc.value), headers


@pytest.mark.parametrize("protocols, ok", [(["http"], True), (["https"], True), (["http", "http"], True),
                                           ([], False), (["grpc"], False), (["gopher"], False)])
def test_route_protocols(protocols: list, ok: bool) -> None:
    if ok:
        assert RouteConfig(paths=["/"], protocols=protocols).protocols == list(dict.fromkeys(protocols))
    else:
        with pytest.raises(ValidationError):
            RouteConfig(paths=["/"], protocols=protocols)


@pytest.mark.parametrize("name, ok", [("svc-1.v2_x~y", True), ("서비스", True), ("a b", False), ("a/b", False),
                                      ("", False)])
def test_names(name: str, ok: bool) -> None:
    if ok:
        assert ServiceConfig(host="h", name=name).name == name
    else:
        with pytest.raises(ValidationError, match="invalid name"):
            ServiceConfig(host="h", name=name)


@pytest.mark.parametrize("tag, ok", [("team:a", True), ("with space", True), ("ü", True), ("a,b", False),
                                     ("a/b", False), ("a\tb", False)])
def test_tags(tag: str, ok: bool) -> None:
    if ok:
        assert ServiceConfig(host="h", tags=[tag]).tags == [tag]
    else:
        with pytest.raises(ValidationError, match="invalid tag"):
            ServiceConfig(host="h", tags=[tag])


@pytest.mark.parametrize(
    "field, value, ok",
    [("retries", 0, True), ("retries", 32767, True), ("retries", 32768, False), ("retries", -1, False),
     ("connect_timeout", 1, True), ("connect_timeout", 2**31 - 2, True), ("connect_timeout", 2**31 - 1, False),
     ("port", 0, True), ("port", 65535, True), ("port", 65536, False), ("port", True, False), ("port", 80.0, False)],
)
def test_service_ranges(field: str, value, ok: bool) -> None:
    if ok:
        assert getattr(ServiceConfig(host="h", **{field: value}), field) == value
    else:
        with pytest.raises(ValidationError):
            ServiceConfig(host="h", **{field: value})


@pytest.mark.parametrize(
    "field, value, ok",
    [("slots", 10, True), ("slots", 65536, True), ("slots", 9, False), ("slots", 65537, False)],
)
def test_upstream_ranges(field: str, value: int, ok: bool) -> None:
    if ok:
        assert getattr(UpstreamConfig(name="u", **{field: value}), field) == value
    else:
        with pytest.raises(ValidationError):
            UpstreamConfig(name="u", **{field: value})


@pytest.mark.parametrize("weight, ok", [(0, True), (65535, True), (65536, False), (-1, False)])
def test_target_weight(weight: int, ok: bool) -> None:
    if ok:
        assert TargetConfig(target="a", weight=weight).weight == weight
    else:
        with pytest.raises(ValidationError):
            TargetConfig(target="a", weight=weight)


# ----------------------------------------------------------------------------------------------------------------
# gateway:
# ----------------------------------------------------------------------------------------------------------------

LISTEN = [
    ("0.0.0.0:8000", ("0.0.0.0", 8000)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::]:8000", ("::", 8000)),
    ("*:80", ("0.0.0.0", 80)),
    (":80", ("0.0.0.0", 80)),
    ("localhost:8080", ("localhost", 8080)),
]


@pytest.mark.parametrize("listen, address", LISTEN, ids=[v for v, _ in LISTEN])
def test_listen(listen: str, address: tuple) -> None:
    assert GatewayConfig(listen=[listen]).listen_addresses() == [address]


@pytest.mark.parametrize("listen", ["8000", "::1:80", "[::1]", "host:port", "0.0.0.0:65536", " 0.0.0.0:80"])
def test_listen_rejected(listen: str) -> None:
    with pytest.raises(ValidationError, match="invalid listen address"):
        GatewayConfig(listen=[listen])


def test_listen_must_not_be_empty() -> None:
    with pytest.raises(ValidationError):
        GatewayConfig(listen=[])


@pytest.mark.parametrize("ips, ok", [(["10.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "10.1.2.3/8"], True),
                                     (["10.0.0.0/33"], False), (["example.com"], False)])
def test_trusted_ips(ips: list, ok: bool) -> None:
    if ok:
        nets = GatewayConfig(trusted_ips=ips).trusted_networks()
        assert [str(n) for n in nets] == ["10.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8", "10.0.0.0/8"]
    else:
        with pytest.raises(ValidationError):
            GatewayConfig(trusted_ips=ips)


@pytest.mark.parametrize(
    "field, value, ok",
    [
        ("dns_resolver", ["8.8.8.8", "8.8.4.4:53", "[::1]:53", "::1"], True),
        ("dns_resolver", ["dns.google"], False),
        ("request_id_header", "X-Correlation-ID", True),
        ("request_id_header", "X Id", False),
        ("keepalive_timeout", 0, True),
        ("keepalive_timeout", -1, False),
        ("keepalive_timeout", float("inf"), False),
        ("dns_valid_ttl", 0.5, True),
        ("max_headers", 0, False),
        ("upstream_keepalive_pool_size", 0, True),
        ("access_log", " ", False),
        ("via_header", "yes", False),
    ],
)
def test_gateway_values(field: str, value, ok: bool) -> None:
    if ok:
        assert getattr(GatewayConfig(**{field: value}), field) == value
    else:
        with pytest.raises(ValidationError):
            GatewayConfig(**{field: value})


def test_compiled_regexes_are_python_patterns() -> None:
    assert isinstance(compile_path_regex("~/x"), re.Pattern)


def test_access_log_bare_off_is_off():
    """YAML reads ``off`` as false; nginx users write ``access_log: off``."""
    from gwanmun.config import load_text

    cfg = load_text('_format_version: "3.0"\ngateway: {access_log: off}\n').config
    assert cfg.gateway.access_log == "off"
