"""Router: Kong 3.x traditional_compatible matching and priority.

Examples come from Kong's docs (gateway/routing/traditional) and Kong's router spec where they exist.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwanmun.routing import RouteEntry, Router, requires_https, route_priority
from gwanmun.routing._regex import literal_prefix


def R(name, index=0, **kw):
    if "headers" in kw and isinstance(kw["headers"], dict):
        kw["headers"] = tuple((k, tuple(v)) for k, v in kw["headers"].items())
    for f in ("methods", "protocols"):
        if f in kw:
            kw[f] = frozenset(kw[f])
    for f in ("hosts", "paths"):
        if f in kw:
            kw[f] = tuple(kw[f])
    return RouteEntry(name=name, index=index, **kw)


def build(*routes):
    return Router([r if r.index else RouteEntry(**{**_asdict(r), "index": i}) for i, r in enumerate(routes)])


def _asdict(r):
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def winner(router, method="GET", host="", path="/", headers=None, scheme="http", server_port=None):
    m = router.match(method, host, path, scheme, headers, server_port=server_port)
    ref = router._match_linear(method, host, path, scheme, headers, server_port=server_port)
    assert (m and (m.route.index, m.matched_path, m.captures, m.matched_host)) == \
        (ref and (ref.route.index, ref.matched_path, ref.captures, ref.matched_host))
    return m.route.name if m else None


# ---------------------------------------------------------------------------------------------
# matching: every configured category must match
# ---------------------------------------------------------------------------------------------

DOCS_ROUTE = R("docs", hosts=["example.com", "foo-service.com"], paths=["/foo", "/bar"], methods=["GET"])


@pytest.mark.parametrize(
    "method,host,path,expected",
    [
        ("GET", "example.com", "/foo", "docs"),
        ("GET", "foo-service.com", "/bar", "docs"),
        ("GET", "example.com", "/foo/hello/world", "docs"),
        ("GET", "example.com", "/", None),  # path does not match
        ("POST", "example.com", "/foo", None),  # method does not match
        ("GET", "foo.com", "/foo", None),  # host does not match
    ],
    ids=["host1-path1", "host2-path2", "deeper-path", "bad-path", "bad-method", "bad-host"],
)
def test_all_categories_must_match_docs_example(method, host, path, expected):
    assert winner(build(DOCS_ROUTE), method, host, path) == expected


HOST_CASES = [
    # route hosts, request Host, scheme, server_port, matches
    (["example.com"], "example.com", "http", None, True),
    (["example.com"], "EXAMPLE.com", "http", None, True),
    (["Example.COM"], "example.com", "http", None, True),
    (["example.com"], "example.com:80", "http", None, True),  # Kong spec: "[host] ignores default port"
    (["example.com"], "example.com:8443", "http", None, True),  # an entry without port ignores the port
    (["example.com"], "www.example.com", "http", None, False),
    (["example.com"], "example.co", "http", None, False),
    (["example.com"], "", "http", None, False),  # no Host header
    (["*.example.com"], "a.example.com", "http", None, True),
    (["*.example.com"], "x.y.example.com", "http", None, True),
    (["*.example.com"], "example.com", "http", None, False),
    (["*.example.com"], "A.Example.Com:81", "http", None, True),
    (["example.*"], "example.com", "http", None, True),
    (["example.*"], "example.org", "http", None, True),
    (["example.*"], "example.co.uk", "http", None, True),
    (["example.*"], "www.example.com", "http", None, False),
    (["domain-3.org:321"], "domain-3.org:321", "http", None, True),  # Kong spec: port-only route
    (["domain-3.org:321"], "domain-3.org:123", "http", None, False),
    (["domain-3.org:321"], "domain-3.org", "http", None, False),  # no port in Host: the listening port
    (["domain-3.org:321"], "domain-3.org", "http", 321, True),
    (["example.com:80"], "example.com", "http", None, True),  # default port of the scheme
    (["example.com:80"], "example.com", "https", None, False),
    (["example.com:443"], "example.com", "https", None, True),
    (["example.com:80"], "example.com:80", "https", None, True),
    (["*.example.com:8080"], "a.example.com:8080", "http", None, True),
    (["*.example.com:8080"], "a.example.com:8081", "http", None, False),
    (["example.*:8080"], "example.net:8080", "http", None, True),
    (["[::1]"], "[::1]:8000", "http", None, True),
    (["[::1]:8000"], "[::1]:8000", "http", None, True),
    (["127.0.0.1"], "127.0.0.1:8000", "http", None, True),
    (["example.com"], "example.com:abc", "http", None, False),  # a non-numeric port stays in the host
]


@pytest.mark.parametrize("hosts,host,scheme,server_port,matches", HOST_CASES,
                         ids=[f"{'|'.join(c[0])}<-{c[1] or 'none'}-{c[2]}-{c[3]}" for c in HOST_CASES])
def test_hosts(hosts, host, scheme, server_port, matches):
    r = build(R("h", hosts=hosts))
    assert (winner(r, host=host, scheme=scheme, server_port=server_port) == "h") is matches


def test_matched_host_reports_the_entry():
    r = build(R("h", hosts=["*.example.com", "api.example.org:8080", "example.net"]))
    assert r.match("GET", "a.example.com", "/").matched_host == "*.example.com"
    assert r.match("GET", "api.example.org:8080", "/").matched_host == "api.example.org:8080"
    assert r.match("GET", "EXAMPLE.net", "/").matched_host == "example.net"
    assert build(R("p", paths=["/"])).match("GET", "x", "/").matched_host is None


PATH_CASES = [
    # route path, request path, matches, matched_path
    ("/foo", "/foo", True, "/foo"),
    ("/foo", "/foobar", True, "/foo"),  # plain string prefix, not segment-aware
    ("/foo", "/foo/bar", True, "/foo"),
    ("/foo", "/fo", False, None),
    ("/foo", "/bar/foo", False, None),
    ("/foo/", "/foo", False, None),
    ("/", "/anything", True, "/"),
    (r"~/users/\d+", "/users/1/x", True, "/users/1"),  # anchored at the start only
    (r"~/users/\d+$", "/users/1/x", False, None),
    (r"~/users/\d+", "/v1/users/1", False, None),
    (r"~/users/(?<id>\d+)$", "/users/42", True, "/users/42"),
    (r"~/a|/b", "/b/x", True, "/b"),
    (r"~/a|/b", "/x/b", False, None),  # every alternative is anchored (Kong 3.x's default: only the first)
    (r"~(?i)/ABC", "/abc", True, "/abc"),
]


@pytest.mark.parametrize("rpath,path,matches,matched", PATH_CASES,
                         ids=[f"{c[0]}<-{c[1]}" for c in PATH_CASES])
def test_paths(rpath, path, matches, matched):
    r = build(R("p", paths=[rpath]))
    assert (winner(r, path=path) == "p") is matches
    if matches:
        assert r.match("GET", "", path).matched_path == matched


CAPTURE_CASES = [
    # Kong docs: /version/(?<version>\d+)/users/(?<user>\S+) -> { "1", "john", version = "1", user = "john" }
    # (Kong 3.x also exposes the whole match as [0])
    (r"~/version/(?<version>\d+)/users/(?<user>\S+)", "/version/1/users/john",
     {0: "/version/1/users/john", 1: "1", 2: "john", "version": "1", "user": "john"}),
    (r"~/users/\d+", "/users/7", {}),  # no group: Kong exposes no captures
    (r"~/a(/b)?", "/a", {}),  # only the whole match took part
    (r"~/a(/b)?(/c)", "/a/c", {0: "/a/c", 2: "/c"}),  # groups that did not take part are left out
    (r"~/(?P<x>\w)", "/q", {0: "/q", 1: "q", "x": "q"}),
    ("/plain", "/plain/x", {}),
]


@pytest.mark.parametrize("rpath,path,captures", CAPTURE_CASES, ids=[c[0] for c in CAPTURE_CASES])
def test_captures(rpath, path, captures):
    m = build(R("c", paths=[rpath])).match("GET", "", path)
    assert m is not None and m.captures == captures


@pytest.mark.parametrize(
    "methods,method,matches",
    [(["GET"], "GET", True), (["GET"], "get", False), (["GET", "HEAD"], "HEAD", True), (["GET"], "POST", False),
     ([], "PURGE", True)],
    ids=["same", "lower-case-request", "second", "other", "no-methods"],
)
def test_methods_are_case_sensitive(methods, method, matches):
    assert (winner(build(R("m", methods=methods, paths=["/"])), method=method) == "m") is matches


HEADER_CASES = [
    # route headers, request headers, matches -- Kong docs: keys are AND, values are OR
    ({"version": ["v1", "v2"]}, {"version": ["v1"]}, True),
    ({"version": ["v1", "v2"]}, {"version": ["v2"]}, True),
    ({"version": ["v1", "v2"]}, {"version": ["V2"]}, True),  # case-insensitive values
    ({"version": ["v1", "v2"]}, {"version": ["v3"]}, False),
    ({"version": ["v1", "v2"]}, {}, False),
    ({"version": ["v1", "v2"]}, None, False),
    ({"version": ["v1", "v2"]}, {"version": ["v3", "v1"]}, True),  # any of the request's values
    ({"version": ["V1"]}, {"version": ["v1"]}, True),
    ({"location": ["my-location-1"], "version": ["v1", "v2"]}, {"location": ["my-location-1"], "version": ["v2"]}, True),
    ({"location": ["my-location-1"], "version": ["v1", "v2"]}, {"version": ["v2"]}, False),
    # Kong spec 15: regex header value (and user_agent names the user-agent header)
    ({"user_agent": [r"~*windows|linux|os\s+x\s*[\d\._]+|solaris|bsd"]},
     {"user-agent": ["Mozilla/5.0 (X11; Linux x86_64)"]}, True),
    ({"user_agent": [r"~*windows|linux|os\s+x\s*[\d\._]+|solaris|bsd"]},
     {"user-agent": ["curl/8.0"]}, False),
    ({"x-env": [r"~*^prod-\d+$"]}, {"x-env": ["PROD-12"]}, True),
    ({"x-env": [r"~*^prod-\d+$"]}, {"x-env": ["preprod-12"]}, False),
    ({"x-env": ["staging", r"~*^prod"]}, {"x-env": ["Staging"]}, True),
]


@pytest.mark.parametrize("rheaders,headers,matches", HEADER_CASES,
                         ids=[f"{i}-{list(c[0])}" for i, c in enumerate(HEADER_CASES)])
def test_headers(rheaders, headers, matches):
    r = build(R("hd", headers=rheaders))
    assert r.uses_headers
    assert (winner(r, headers=headers) == "hd") is matches


def test_uses_headers_only_when_a_route_has_headers():
    assert not build(R("a", paths=["/"])).uses_headers
    assert build(R("a", paths=["/"]), R("b", headers={"x": ["1"]})).uses_headers


def test_protocols_do_not_filter_http_routes_but_stream_routes_are_left_out():
    r = build(R("https-only", protocols=["https"], paths=["/s"]), R("tcp", protocols=["tcp"]),
              R("grpc", protocols=["grpc"], paths=["/g"]))
    m = r.match("GET", "", "/s", "http")
    assert m.route.name == "https-only"  # Kong matches, then answers 426
    assert requires_https(m.route, "http") and not requires_https(m.route, "https")
    assert not requires_https(build(R("both", paths=["/"])).match("GET", "", "/").route, "http")
    assert r.match("GET", "", "/g").route.name == "grpc"
    assert r.match("GET", "", "/x") is None  # the tcp route is not an HTTP route


def test_no_routes_and_no_match():
    assert Router([]).match("GET", "a", "/") is None
    assert build(R("a", paths=["/a"])).match("GET", "", "/b") is None


# ---------------------------------------------------------------------------------------------
# priority
# ---------------------------------------------------------------------------------------------

PRIORITY_CASES = [
    # (id, routes in config order, request (method, host, path, headers), expected winner)
    ("docs-more-categories-GET", [R("host", hosts=["example.com"]), R("host+method", hosts=["example.com"], methods=["POST"])],
     ("GET", "example.com", "/", None), "host"),
    ("docs-more-categories-POST", [R("host", hosts=["example.com"]), R("host+method", hosts=["example.com"], methods=["POST"])],
     ("POST", "example.com", "/", None), "host+method"),
    ("longest-prefix", [R("short", paths=["/service"]), R("long", paths=["/service/resource"])],
     ("GET", "", "/service/resource/x", None), "long"),
    ("longest-prefix-other-order", [R("long", paths=["/service/resource"]), R("short", paths=["/service"])],
     ("GET", "", "/service/resource/x", None), "long"),
    ("shorter-prefix-when-longer-misses", [R("short", paths=["/service"]), R("long", paths=["/service/resource"])],
     ("GET", "", "/service/other", None), "short"),
    ("plain-host-beats-wildcard", [R("wild", hosts=["*.example.com"], paths=["/x"]), R("plain", hosts=["a.example.com"], paths=["/x"])],
     ("GET", "a.example.com", "/x", None), "plain"),
    ("plain-host-beats-no-host", [R("nohost", methods=["GET"]), R("plain", hosts=["a.example.com"])],
     ("GET", "a.example.com", "/", None), "plain"),
    ("wildcard-with-more-categories-wins", [R("plain", hosts=["a.example.com"]), R("wild+path", hosts=["*.example.com"], paths=["/api"])],
     ("GET", "a.example.com", "/api", None), "wild+path"),
    ("kong-3094-more-rules-wins", [R("api-1", hosts=["*.domain.com"]), R("api-2", hosts=["subdomain.domain.com"], paths=["/api"])],
     ("GET", "subdomain.domain.com", "/api", None), "api-2"),
    ("more-header-names-win", [R("one", hosts=["h"], headers={"x": ["1"]}), R("two", hosts=["h"], headers={"x": ["1"], "y": ["2"]})],
     ("GET", "h", "/", {"x": ["1"], "y": ["2"]}), "two"),
    ("fewer-headers-when-other-misses", [R("one", hosts=["h"], headers={"x": ["1"]}), R("two", hosts=["h"], headers={"x": ["1"], "y": ["2"]})],
     ("GET", "h", "/", {"x": ["1"]}), "one"),
    # both set two categories (paths+methods vs paths+headers): the header count decides before path length
    ("header-count-beats-path-length", [R("path", paths=["/a/very/long/path"], methods=["GET"]), R("hdr", paths=["/"], headers={"x": ["1"]})],
     ("GET", "", "/a/very/long/path", {"x": ["1"]}), "hdr"),
    ("regex-beats-longer-prefix", [R("prefix", paths=["/account/some/else/very/long"]), R("regex", paths=[r"~/account"])],
     ("GET", "", "/account/some/else/very/long", None), "regex"),
    ("kong-10151-regex-first", [R("account-get", paths=["/account"], methods=["GET"]), R("account-some", paths=[r"~/account/some/.+/else"], methods=["GET"])],
     ("GET", "", "/account/some/x/else", None), "account-some"),
    ("regex-priority-orders-regexes", [R("low", paths=[r"~/a"], regex_priority=1), R("high", paths=[r"~/a/b"], regex_priority=5)],
     ("GET", "", "/a/b", None), "high"),
    ("negative-regex-priority-is-lower", [R("neg", paths=[r"~/a/b"], regex_priority=-1), R("zero", paths=[r"~/a"])],
     ("GET", "", "/a/b", None), "zero"),
    ("regex-priority-ignored-for-prefixes", [R("root", paths=["/"], regex_priority=1), R("v1", paths=["/v1"])],
     ("GET", "foo.com", "/v1/xxx", None), "v1"),  # Kong issue 7687
    ("tie-goes-to-config-order", [R("first", paths=["/same"]), R("second", paths=["/same"])],
     ("GET", "", "/same", None), "first"),
    ("regex-tie-goes-to-config-order", [R("first", paths=[r"~/(a|b)"]), R("second", paths=[r"~/a"])],
     ("GET", "", "/a", None), "first"),
    # Kong issue 14457: regex_priority must still decide when both routes also have headers
    ("kong-14457-regex-priority-with-headers",
     [R("generic", paths=[r"~/webhook/([a-zA-Z0-9-]+)"], headers={"environment-region": ["production-us"]}, regex_priority=1),
      R("specific", paths=[r"~(?i)/webhook/foo/bar/?$"], headers={"environment-region": ["production-us"]}, regex_priority=2)],
     ("GET", "", "/webhook/foo/bar", {"environment-region": ["production-us"]}), "specific"),
    # Kong PR 10615: a multi-path route is ranked per path kind / length
    ("split-prefix-part-loses-to-longer", [R("mixed", paths=["/", r"~/special"]), R("api", paths=["/api"])],
     ("GET", "", "/api/x", None), "api"),
    ("split-regex-part-wins", [R("mixed", paths=["/", r"~/special"]), R("api", paths=["/api"])],
     ("GET", "", "/special", None), "mixed"),
    ("split-by-length", [R("multi", paths=["/a", "/abc/def"]), R("mid", paths=["/abc"])],
     ("GET", "", "/abc/x", None), "mid"),
    ("split-by-length-long-part", [R("multi", paths=["/a", "/abc/def"]), R("mid", paths=["/abc"])],
     ("GET", "", "/abc/def", None), "multi"),
]


@pytest.mark.parametrize("routes,request_,expected", [c[1:] for c in PRIORITY_CASES], ids=[c[0] for c in PRIORITY_CASES])
def test_priority(routes, request_, expected):
    method, host, path, headers = request_
    assert winner(build(*routes), method, host, path, headers) == expected


DOCS_REGEX_ROUTES = [
    R("status", paths=[r"~/status/\d+"], regex_priority=0),
    R("version-status", paths=[r"~/version/\d+/status/\d+"], regex_priority=6),
    R("version", paths=["/version"]),
    R("version-any", paths=[r"~/version/any/"]),
]


@pytest.mark.parametrize(
    "path,expected",
    [("/version/1/status/2", "version-status"), ("/status/3", "status"), ("/version/any/x", "version-any"),
     ("/version", "version"), ("/version/2", "version")],
    ids=["rp6", "rp0", "regex-before-prefix", "prefix", "prefix-when-regexes-miss"],
)
def test_docs_regex_evaluation_order(path, expected):
    """Kong docs "Regex evaluation order": /version/\\d+/status/\\d+, /status/\\d+, /version/any/, /version."""
    assert winner(build(*DOCS_REGEX_ROUTES), path=path) == expected


def test_first_matching_regex_of_the_part_gives_the_captures():
    r = build(R("m", paths=[r"~/(?<a>x)(?<b>y)?", r"~/(?<c>x)y"]))
    assert r.match("GET", "", "/xy").captures == {0: "/xy", 1: "x", 2: "y", "a": "x", "b": "y"}


@pytest.mark.parametrize(
    "route,expected",
    [
        (R("a", paths=["/abc"]), [(1, 0, 0, 0, 0, 4)]),
        (R("a", hosts=["x.com"], methods=["GET"], paths=["/abc"]), [(3, 1, 0, 0, 0, 4)]),
        (R("a", hosts=["*.x.com", "y.com"]), [(1, 0, 0, 0, 0, 0)]),
        (R("a", headers={"a": ["1"], "b": ["2"]}, paths=[r"~/x"], regex_priority=7), [(2, 0, 2, 1, 7, 0)]),
        (R("a", paths=["/a", r"~/b", "/cc", "/d", r"~/e"], regex_priority=3),
         [(1, 0, 0, 0, 0, 2), (1, 0, 0, 1, 3, 0), (1, 0, 0, 0, 0, 3)]),
    ],
    ids=["prefix", "host-method-prefix", "wildcard", "headers-regex", "split"],
)
def test_route_priority_fields(route, expected):
    """(categories, plain hosts only, header names, regex, regex_priority, prefix length) per part."""
    assert route_priority(route) == expected


# ---------------------------------------------------------------------------------------------
# regex translation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "rpath,path,matches",
    [(r"~/users/(?<id>\d+)$", "/users/42", True), (r"~(?i)/ABC", "/abc/x", True), (r"~(?i)/ABC$", "/abc/x", False),
     (r"~/(?'n'x)\k<n>", "/xx", True), (r"~/a[[:digit:]]+", "/a12", True), (r"~/end\z", "/end", True)],
    ids=["named-group", "leading-flag", "leading-flag-dollar", "pcre-backref", "posix-class", "end-of-text"],
)
def test_pcre_syntax(rpath, path, matches):
    assert (winner(build(R("p", paths=[rpath])), path=path) == "p") is matches


@pytest.mark.parametrize(
    "pattern,prefix",
    [(r"/users/\d+", "/users/"), (r"/users/(?<id>\d+)$", "/users/"), (r"/api/v1\.0/x", "/api/v1.0/x"),
     (r"/ab?c", "/a"), (r"/ab*", "/a"), (r"/ab{2}", "/a"), (r"/ab+", "/ab"), (r"/a|/b", ""), (r"(?i)/a", ""),
     (r"^/x", "/x"), (r".*", ""), (r"/a\d", "/a"), (r"/files/.+\.(png|jpg)$", "/files/"), (r"/a[|]b", "/a"),
     (r"/a\|b", "/a|b")],
    ids=["digits", "named", "escaped-dot", "optional", "star", "counted", "plus", "alternation", "flag", "caret",
         "dot", "class-escape", "nested-alternation", "bar-in-class", "escaped-bar"],
)
def test_literal_prefix(pattern, prefix):
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize("rpath", ["~/a(b", r"~/a/(?i)b"], ids=["unbalanced", "mid-pattern-flag"])
def test_invalid_regex_names_the_route(rpath):
    with pytest.raises(ValueError, match="bad"):
        Router([R("bad", paths=[rpath])])


# ---------------------------------------------------------------------------------------------
# the index equals a brute-force scan in priority order
# ---------------------------------------------------------------------------------------------

HOSTS = ["a.com", "b.com", "A.com", "*.a.com", "*.com", "a.*", "x.a.com", "a.com:8080", "b.com:80", "*.a.com:443"]
PATHS = ["/", "/a", "/ab", "/a/b", "/b", "/abc", "/a/", r"~/a", r"~/a/(?<id>\d+)", r"~/b|/c", r"~/(a|b)x?",
         r"~/a\.b", r"~/ab?c", r"~(?i)/A", r"~/a/\d+$", r"~/"]
REQ_HOSTS = ["", "a.com", "A.COM", "b.com", "x.a.com", "y.x.a.com", "a.org", "a.com:8080", "a.com:80", "b.com",
             "b.com:80", "x.a.com:443", "[::1]:80", "a.com:"]
HEADER_VALUES = ["1", "2", "X", r"~*^x", r"~*2$"]

route_st = st.builds(
    dict,
    methods=st.lists(st.sampled_from(["GET", "POST"]), max_size=2, unique=True),
    hosts=st.lists(st.sampled_from(HOSTS), max_size=3, unique=True),
    paths=st.lists(st.sampled_from(PATHS), max_size=3, unique=True),
    headers=st.dictionaries(st.sampled_from(["h1", "h_2"]), st.lists(st.sampled_from(HEADER_VALUES), min_size=1,
                                                                     max_size=2, unique=True), max_size=2),
    regex_priority=st.integers(-2, 2),
)
request_st = st.tuples(
    st.sampled_from(["GET", "POST", "PUT"]),
    st.sampled_from(REQ_HOSTS),
    st.one_of(st.sampled_from(["/", "/a", "/ab", "/abc", "/a/1", "/a/12/x", "/a.b", "/b", "/c", "/x/c", "/bx",
                               "/A", "/abcd", "/a/"]),
              st.text(alphabet="/abc1.xA", max_size=8).map(lambda s: "/" + s)),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["h1", "h-2"]),
                                         st.lists(st.sampled_from(["1", "2", "x", "X2", "y"]), min_size=1, max_size=2),
                                         max_size=2)),
    st.sampled_from(["http", "https"]),
    st.sampled_from([None, 80, 443, 8080]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(route_st, min_size=1, max_size=12), st.lists(request_st, min_size=1, max_size=8))
def test_index_equals_brute_force(route_specs, requests):
    routes = [R(f"r{i}", index=i, **{k: v for k, v in spec.items() if k != "headers"},
                headers=spec["headers"]) for i, spec in enumerate(route_specs)]
    router = Router(routes)
    for method, host, path, headers, scheme, port in requests:
        for _ in range(2):  # twice: the second call may come from the cache
            got = router.match(method, host, path, scheme, headers, server_port=port)
            ref = router._match_linear(method, host, path, scheme, headers, server_port=port)
            assert (got and (got.route.index, got.matched_path, got.captures, got.matched_host)) == \
                (ref and (ref.route.index, ref.matched_path, ref.captures, ref.matched_host))


def test_ten_thousand_routes_equal_brute_force():
    routes = []
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            routes.append(R(f"svc{i}", index=i, paths=[f"/svc{i}"]))
        elif kind == 1:
            routes.append(R(f"host{i}", index=i, hosts=[f"h{i}.example.com"], paths=["/"]))
        elif kind == 2:
            routes.append(R(f"m{i}", index=i, methods=["POST"], paths=[f"/svc{i - 2}/items"]))
        else:
            routes.append(R(f"api{i}", index=i, hosts=["api.example.com"], paths=[f"/v{i}/"]))
    routes += [R("users", index=10_000, paths=[r"~/users/(?<id>\d+)$"]),
               R("wild", index=10_001, hosts=["*.example.com"]),
               R("any", index=10_002, paths=["/"])]
    router = Router(routes)
    reqs = [("GET", "", "/svc4/x"), ("POST", "", "/svc4/items/1"), ("GET", "h5.example.com", "/z"),
            ("GET", "api.example.com", "/v7/x"), ("GET", "api.example.com", "/v77/x"), ("GET", "", "/users/12"),
            ("GET", "zz.example.com", "/"), ("GET", "", "/nothing"), ("GET", "h9999.example.com", "/svc8/")]
    for method, host, path in reqs:
        got = router.match(method, host, path)
        ref = router._match_linear(method, host, path)
        assert got.route.name == ref.route.name, (method, host, path)
