"""upstream_path: Kong's strip_path / path_handling rules.

The main table is Kong's own path-handling fixture (``spec/fixtures/router_path_handling_tests.lua``),
rewritten as data: (service path, route path or None for a host-only route, strip_path values,
path_handling values, request path, expected upstream path).  Kong runs the ``v1`` rows only under
the ``traditional`` router flavor; under the default ``traditional_compatible`` a ``v1`` route is
handled exactly like ``v0``.
"""

from __future__ import annotations

import pytest

from gwanmun.routing import RouteEntry, Router, upstream_path
from gwanmun.routing.paths import sanitize_postfix

B = (False, True)
V = ("v0", "v1")

KONG_TABLE = [
    ("/", "/", B, V, "/", "/"),
    ("/", "/", B, V, "/route", "/route"),
    ("/", "/", B, V, "/route/", "/route/"),
    ("/", "/", B, V, "/routereq", "/routereq"),
    ("/", "/", B, V, "/route/req", "/route/req"),
    ("/", "/route", False, V, "/route", "/route"),
    ("/", "/route", False, V, "/route/", "/route/"),
    ("/", "/route", False, V, "/routereq", "/routereq"),
    ("/", "/route", True, V, "/route", "/"),
    ("/", "/route", True, V, "/route/", "/"),
    ("/", "/route", True, V, "/routereq", "/req"),
    ("/", "/route/", False, V, "/route/", "/route/"),
    ("/", "/route/", False, V, "/route/req", "/route/req"),
    ("/", "/route/", True, V, "/route/", "/"),
    ("/", "/route/", True, V, "/route/req", "/req"),
    ("/srv", "/rou", False, "v0", "/roureq", "/srv/roureq"),
    ("/srv", "/rou", False, "v1", "/roureq", "/srvroureq"),
    ("/srv", "/rou", True, "v0", "/roureq", "/srv/req"),
    ("/srv", "/rou", True, "v1", "/roureq", "/srvreq"),
    ("/srv/", "/rou", False, V, "/rou", "/srv/rou"),
    ("/srv/", "/rou", True, "v0", "/rou", "/srv"),
    ("/srv/", "/rou", True, "v1", "/rou", "/srv/"),
    ("/service", "/", B, V, "/", "/service"),
    ("/service", "/", B, "v0", "/route", "/service/route"),
    ("/service", "/", B, "v1", "/route", "/serviceroute"),
    ("/service", "/", B, "v0", "/route/", "/service/route/"),
    ("/service", "/", B, "v1", "/route/", "/serviceroute/"),
    ("/service", "/", B, "v0", "/routereq", "/service/routereq"),
    ("/service", "/", B, "v1", "/routereq", "/serviceroutereq"),
    ("/service", "/", B, "v0", "/route/req", "/service/route/req"),
    ("/service", "/", B, "v1", "/route/req", "/serviceroute/req"),
    ("/service", "/route", False, "v0", "/route", "/service/route"),
    ("/service", "/route", False, "v1", "/route", "/serviceroute"),
    ("/service", "/route", False, "v0", "/route/", "/service/route/"),
    ("/service", "/route", False, "v1", "/route/", "/serviceroute/"),
    ("/service", "/route", False, "v0", "/routereq", "/service/routereq"),
    ("/service", "/route", False, "v1", "/routereq", "/serviceroutereq"),
    ("/service", "/route", True, V, "/route", "/service"),
    ("/service", "/route", True, V, "/route/", "/service/"),
    ("/service", "/route", True, "v0", "/routereq", "/service/req"),
    ("/service", "/route", True, "v1", "/routereq", "/servicereq"),
    ("/service", "/route/", False, "v0", "/route/", "/service/route/"),
    ("/service", "/route/", False, "v1", "/route/", "/serviceroute/"),
    ("/service", "/route/", False, "v0", "/route/req", "/service/route/req"),
    ("/service", "/route/", False, "v1", "/route/req", "/serviceroute/req"),
    ("/service", "/route/", True, "v0", "/route/", "/service/"),
    ("/service", "/route/", True, "v1", "/route/", "/service"),
    ("/service", "/route/", True, "v0", "/route/req", "/service/req"),
    ("/service", "/route/", True, "v1", "/route/req", "/servicereq"),
    ("/service/", "/", B, "v0", "/route/", "/service/route/"),
    ("/service/", "/", B, "v1", "/route/", "/service/route/"),
    ("/service/", "/", B, V, "/", "/service/"),
    ("/service/", "/", B, V, "/route", "/service/route"),
    ("/service/", "/", B, V, "/routereq", "/service/routereq"),
    ("/service/", "/", B, V, "/route/req", "/service/route/req"),
    ("/service/", "/route", False, V, "/route", "/service/route"),
    ("/service/", "/route", False, V, "/route/", "/service/route/"),
    ("/service/", "/route", False, V, "/routereq", "/service/routereq"),
    ("/service/", "/route", True, "v0", "/route", "/service"),
    ("/service/", "/route", True, "v1", "/route", "/service/"),
    ("/service/", "/route", True, V, "/route/", "/service/"),
    ("/service/", "/route", True, V, "/routereq", "/service/req"),
    ("/service/", "/route/", False, V, "/route/", "/service/route/"),
    ("/service/", "/route/", False, V, "/route/req", "/service/route/req"),
    ("/service/", "/route/", True, V, "/route/", "/service/"),
    ("/service/", "/route/", True, V, "/route/req", "/service/req"),
    # host-only routes (no path matched)
    ("/", None, B, V, "/", "/"),
    ("/", None, B, V, "/route", "/route"),
    ("/", None, B, V, "/route/", "/route/"),
    ("/service", None, B, V, "/", "/service"),
    ("/service", None, B, "v0", "/route", "/service/route"),
    ("/service", None, B, "v1", "/route", "/serviceroute"),
    ("/service", None, B, "v0", "/route/", "/service/route/"),
    ("/service", None, B, "v1", "/route/", "/serviceroute/"),
    ("/service/", None, B, V, "/", "/service/"),
    ("/service/", None, B, V, "/route", "/service/route"),
    ("/service/", None, B, V, "/route/", "/service/route/"),
]

# Kong Admin API docs, route object, path_handling table (service /s)
DOCS_TABLE = [
    ("/s", "/fv0", False, "v0", "/fv0req", "/s/fv0req"),
    ("/s", "/fv1", False, "v1", "/fv1req", "/sfv1req"),
    ("/s", "/tv0", True, "v0", "/tv0req", "/s/req"),
    ("/s", "/tv1", True, "v1", "/tv1req", "/sreq"),
    ("/s", "/fv0/", False, "v0", "/fv0/req", "/s/fv0/req"),
    ("/s", "/fv1/", False, "v1", "/fv1/req", "/sfv1/req"),
    ("/s", "/tv0/", True, "v0", "/tv0/req", "/s/req"),
    ("/s", "/tv1/", True, "v1", "/tv1/req", "/sreq"),
]


def _expand(table):
    out = []
    for svc, rpath, strips, handlings, req, expected in table:
        for strip in strips if isinstance(strips, tuple) else (strips,):
            for ph in handlings if isinstance(handlings, tuple) else (handlings,):
                out.append((svc, rpath, strip, ph, req, expected))
    return out


ROWS = _expand(KONG_TABLE) + _expand(DOCS_TABLE)
V0_EXPECTED = {(s, r, st, req): exp for s, r, st, ph, req, exp in ROWS if ph == "v0"}


def _ids(rows):
    return [f"svc={s} route={r} strip={int(st)} {ph} req={req}" for s, r, st, ph, req, _ in rows]


def _match(route_path, strip, handling, req):
    route = RouteEntry(
        name="r",
        paths=(route_path,) if route_path is not None else (),
        hosts=("localbin.test",) if route_path is None else (),
        strip_path=strip,
        path_handling=handling,
    )
    m = Router([route]).match("GET", "localbin.test", req)
    assert m is not None, "the fixture's request must match its route"
    return m


@pytest.mark.parametrize("svc,rpath,strip,ph,req,expected", ROWS, ids=_ids(ROWS))
def test_traditional_flavor_table(svc, rpath, strip, ph, req, expected):
    m = _match(rpath, strip, ph, req)
    assert upstream_path(svc, m, req, flavor="traditional") == expected


V0_ROWS = [r for r in ROWS if r[3] == "v0"]


@pytest.mark.parametrize("svc,rpath,strip,ph,req,expected", V0_ROWS, ids=_ids(V0_ROWS))
def test_default_flavor_v0_table(svc, rpath, strip, ph, req, expected):
    m = _match(rpath, strip, ph, req)
    assert upstream_path(svc, m, req) == expected


V1_ROWS = [r for r in ROWS if r[3] == "v1" and (r[0], r[1], r[2], r[4]) in V0_EXPECTED]


@pytest.mark.parametrize("svc,rpath,strip,ph,req,expected", V1_ROWS, ids=_ids(V1_ROWS))
def test_default_flavor_treats_v1_as_v0(svc, rpath, strip, ph, req, expected):
    """Kong: path_handling='v1' "will not work under 'traditional_compatible' router_flavor"."""
    m = _match(rpath, strip, "v1", req)
    assert upstream_path(svc, m, req) == V0_EXPECTED[(svc, rpath, strip, req)]


@pytest.mark.parametrize("svc", [None, "/"], ids=["service-path-None", "service-path-slash"])
@pytest.mark.parametrize(
    "rpath,strip,req,expected",
    [
        ("/", True, "/", "/"),
        ("/route", True, "/route", "/"),
        ("/route", True, "/route/x", "/x"),
        ("/route", False, "/route/x", "/route/x"),
        (None, True, "/a/b/", "/a/b/"),
    ],
    ids=["root", "strip-all", "strip-prefix", "no-strip", "host-only"],
)
def test_service_path_none_is_slash(svc, rpath, strip, req, expected):
    m = _match(rpath, strip, "v0", req)
    assert upstream_path(svc, m, req) == expected


REGEX_ROWS = [
    # service, regex path, strip, request, expected (the regex-matched text is the stripped prefix)
    ("/s", r"~/users/\d+", True, "/users/42/profile", "/s/profile"),
    ("/s", r"~/users/\d+", False, "/users/42/profile", "/s/users/42/profile"),
    ("/s", r"~/users/\d+", True, "/users/42", "/s"),
    ("/s", r"~/users/\d+", True, "/users/42/", "/s/"),
    ("/s/", r"~/users/\d+", True, "/users/42", "/s"),
    ("/s/", r"~/users/\d+", True, "/users/42/", "/s/"),
    ("/s/", r"~/users/\d+", True, "/users/42x", "/s/x"),
    (None, r"~/api/v(?<ver>\d+)", True, "/api/v2", "/"),
    (None, r"~/api/v(?<ver>\d+)", True, "/api/v2/x", "/x"),
    ("/s", r"~/a/", True, "/a/", "/s/"),
    ("/s", r"~/a/$", True, "/a/", "/s/"),
    ("/s", r"~/version/(?<version>\d+)/users/(?<user>\S+)", True, "/version/1/users/john", "/s"),
    ("/s", r"~/v\d", True, "/v1b", "/s/b"),
]


@pytest.mark.parametrize("svc,rpath,strip,req,expected", REGEX_ROWS,
                         ids=[f"svc={r[0]} {r[1]} strip={int(r[2])} req={r[3]}" for r in REGEX_ROWS])
def test_regex_strip_path(svc, rpath, strip, req, expected):
    m = _match(rpath, strip, "v0", req)
    assert upstream_path(svc, m, req) == expected


@pytest.mark.parametrize(
    "svc,rpath,req,expected",
    [
        ("/s", "/foo", "/foo..", "/s"),
        ("/s", "/foo", "/foo.", "/s"),
        ("/s", "/foo", "/foo../x", "/s/x"),
        ("/s", "/foo", "/foo./x", "/s/x"),
        ("/s", "/foo", "/foo.x", "/s/.x"),
    ],
    ids=["dotdot", "dot", "dotdot-slash", "dot-slash", "dot-name"],
)
def test_dot_postfix_is_sanitized(svc, rpath, req, expected):
    m = _match(rpath, True, "v0", req)
    assert upstream_path(svc, m, req) == expected


@pytest.mark.parametrize(
    "postfix,expected",
    [("", ""), (".", ""), ("..", ""), ("./a", "a"), ("../a", "a"), ("...", "..."), ("/a", "/a"), ("a", "a")],
    ids=["empty", "dot", "dotdot", "dot-slash", "dotdot-slash", "three-dots", "slash", "plain"],
)
def test_sanitize_postfix(postfix, expected):
    assert sanitize_postfix(postfix) == expected
