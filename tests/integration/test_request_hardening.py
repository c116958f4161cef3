"""Request hardening end to end (issue 3): each hostile request head or target, sent as raw bytes to the real gateway,
is answered with an error (400, or 501/505 where noted) and the connection closed, and the upstream never sees it;
a target that normalises to another path reaches the route of the normalised path, and the upstream receives that
same path (so a route cannot be bypassed with ``..;``, ``%2e%2e``, ``//`` and the like).

Some cases are refused by llhttp itself (httptools 0.9 is strict); the rest by ``gwanmun/http/validate.py``
(``check_request_head``) and ``gwanmun/http/normalize.py`` (``split_target``), which ``Exchange.start`` calls first.

Every attack carries ``?t=<token>``; after it, a normal request with the same token is sent on a fresh connection
and awaited at the upstream, so "the upstream never saw it" is checked after anything forwarded would have arrived.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.gateway import route, service
from tests.fixtures.rawhttp import PeerClosed, RawConnection


def _config(scripted, **gateway) -> dict:
    """Three services on the scripted upstream; each service path tells which route a request took:
    /admin -> /A/admin..., /public -> /P/public..., everything else -> /O/...  (strip_path off)."""
    cfg: dict = {"services": [
        service("admin", scripted.url + "/A", [route("admin", ["/admin"], strip_path=False)]),
        service("public", scripted.url + "/P", [route("public", ["/public"], strip_path=False)]),
        service("other", scripted.url + "/O", [route("other", ["/"], strip_path=False)]),
    ]}
    if gateway:
        cfg["gateway"] = gateway
    return cfg


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(_config(scripted))


def _exchange(gw, data: bytes, timeout: float = 5.0):
    """Send raw bytes; return (the response or None if closed without one, whether the connection then closed)."""
    with RawConnection(gw.host, gw.port, timeout=timeout) as c:
        c.send(data)
        try:
            r = c.read_response()
        except (PeerClosed, ConnectionResetError):
            return None, True
        except TimeoutError:
            raise AssertionError(f"no response and no close within {timeout}s; received {bytes(c.buf)[:300]!r}")
        try:
            closed = c.peer_closed(1.0)
        except AssertionError:
            closed = False
        return r, closed


def _served(gw, data: bytes):
    """Send raw bytes that make one request; return its response (None if the connection closed without one)."""
    with RawConnection(gw.host, gw.port, timeout=5.0) as c:
        c.send(data)
        try:
            return c.read_response()
        except (PeerClosed, ConnectionResetError):
            return None


def _barrier(gw, scripted, token: str) -> None:
    """A normal request tagged with ``token``, awaited at the upstream."""
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/other/echo?t={token}&barrier=1")
        assert c.read_response().status == 200
    scripted.wait_request(token)


def _assert_rejected(gw, scripted, token: str, data: bytes, status: int = 400):
    r, closed = _exchange(gw, data)
    assert r is not None, "connection closed without an answer"
    assert r.status == status, f"expected {status}, got {r.status}: {r.body[:200]!r}"
    assert r.json()["message"]
    assert closed, "connection left open after a rejected request"
    _barrier(gw, scripted, token)
    seen = [x.target for x in scripted.find(token) if not x.query.get("barrier")]
    assert not seen, f"the upstream received the rejected request: {seen}"
    return r


def _head(t: str, lines: str, method: str = "GET", target: str = "/public/echo", version: str = "HTTP/1.1",
          body: str = "") -> bytes:
    sep = "&" if "?" in target else "?"
    return f"{method} {target}{sep}t={t} {version}\r\n{lines}\r\n{body}".encode("latin-1")


# ---- framing: Content-Length and Transfer-Encoding ------------------------------------------------------------

FRAMING = [
    # llhttp: "Content-Length can't be present with Transfer-Encoding" (and the reverse)
    ("cl-and-te", "POST", "Host: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n", 400),
    ("te-and-cl", "POST", "Host: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n", 400),
    # llhttp: "Duplicate Content-Length", even for equal values (stricter than RFC 9110 §8.6, which allows those)
    ("cl-differing", "POST", "Host: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n", "abcd", 400),
    ("cl-repeated-equal", "POST", "Host: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n", "abc", 400),
    ("cl-list", "POST", "Host: x\r\nContent-Length: 3, 3\r\n", "abc", 400),
    # llhttp: "Invalid character in Content-Length" / "Empty Content-Length" / "Content-Length overflow"
    ("cl-letters", "POST", "Host: x\r\nContent-Length: abc\r\n", "", 400),
    ("cl-negative", "POST", "Host: x\r\nContent-Length: -1\r\n", "", 400),
    ("cl-plus", "POST", "Host: x\r\nContent-Length: +3\r\n", "abc", 400),
    ("cl-hex", "POST", "Host: x\r\nContent-Length: 0x3\r\n", "abc", 400),
    ("cl-inner-space", "POST", "Host: x\r\nContent-Length: 1 2\r\n", "abcdefghijkl", 400),
    ("cl-empty", "POST", "Host: x\r\nContent-Length: \r\n", "", 400),
    ("cl-overflow", "POST", "Host: x\r\nContent-Length: 99999999999999999999999\r\n", "", 400),
    # final coding not chunked: llhttp refuses after the head is complete; Exchange.start refuses it first
    ("te-gzip", "POST", "Host: x\r\nTransfer-Encoding: gzip\r\n", "5\r\nhello\r\n0\r\n\r\n", 400),
    ("te-identity", "POST", "Host: x\r\nTransfer-Encoding: identity\r\n", "", 400),
    ("te-chunkedx", "POST", "Host: x\r\nTransfer-Encoding: chunkedx\r\n", "", 400),
    ("te-chunked-gzip", "POST", "Host: x\r\nTransfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n", 400),
    ("te-split-fields", "POST", "Host: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n", "", 400),
    ("te-chunked-twice", "POST", "Host: x\r\nTransfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n", 400),
    ("te-empty", "POST", "Host: x\r\nTransfer-Encoding: \r\n", "", 400),
    ("te-vertical-tab", "POST", "Host: x\r\nTransfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n", 400),
    # llhttp accepts "gzip, chunked" (final coding chunked) and the gateway would forward the gzip-coded body
    # as if it were plain: 501, as nginx answers
    pytest.param("te-gzip-then-chunked", "POST", "Host: x\r\nTransfer-Encoding: gzip, chunked\r\n",
                 "5\r\nhello\r\n0\r\n\r\n", 501),
]


@pytest.mark.parametrize("name, method, lines, body, status", FRAMING, ids=[
    p.values[0] if hasattr(p, "values") else p[0] for p in FRAMING])
def test_framing_rejected(gw, scripted, token, name, method, lines, body, status):
    _assert_rejected(gw, scripted, token, _head(token, lines, method, "/public/sink", body=body), status)


def test_transfer_encoding_on_http10(gw, scripted, token):
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request cannot be trusted. llhttp accepts it (and parses the
    body as chunked); Exchange.start refuses it."""
    data = _head(token, "Host: x\r\nTransfer-Encoding: chunked\r\n", "POST", "/public/sink", "HTTP/1.0",
                 "5\r\nhello\r\n0\r\n\r\n")
    _assert_rejected(gw, scripted, token, data)


# ---- field syntax: all refused by llhttp before the head is complete --------------------------------------------

SYNTAX = [
    ("obs-fold-space", "Host: x\r\nX-A: a\r\n b\r\n"),
    ("obs-fold-tab", "Host: x\r\nX-A: a\r\n\tb\r\n"),
    ("obs-fold-first-line", " Host: x\r\n"),
    ("space-before-colon", "Host : x\r\n"),
    ("tab-before-colon", "Host\t: x\r\n"),
    ("space-before-colon-te", "Transfer-Encoding : chunked\r\nHost: x\r\n"),
    ("name-with-space", "Host: x\r\nBad Name: v\r\n"),
    ("name-with-at", "Host: x\r\nBad@Name: v\r\n"),
    ("name-with-paren", "Host: x\r\nX(a): v\r\n"),
    ("name-with-slash", "Host: x\r\nX/a: v\r\n"),
    ("name-empty", "Host: x\r\n: v\r\n"),
    ("name-8bit", "Host: x\r\nX-\xe9: v\r\n"),
    ("name-nul", "Host: x\r\nX-\x00: v\r\n"),
    ("no-colon", "Host: x\r\nNo colon here\r\n"),
    ("value-nul", "Host: x\r\nX-A: a\x00b\r\n"),
    ("value-cr", "Host: x\r\nX-A: a\rb\r\n"),
    ("value-lf", "Host: x\r\nX-A: a\nX-Injected: 1\r\n"),
    ("value-ctl", "Host: x\r\nX-A: a\x01b\r\n"),
    ("value-del", "Host: x\r\nX-A: a\x7fb\r\n"),
    ("host-nul", "Host: x\x00y\r\n"),
]


@pytest.mark.parametrize("name, lines", SYNTAX, ids=[n for n, _ in SYNTAX])
def test_field_syntax_rejected(gw, scripted, token, name, lines):
    _assert_rejected(gw, scripted, token, _head(token, lines))


def test_bare_lf_line_endings_rejected(gw, scripted, token):
    _assert_rejected(gw, scripted, token, f"GET /public/echo?t={token} HTTP/1.1\nHost: x\n\n".encode())


# ---- Host ---------------------------------------------------------------------------------------------------------

HOSTS = [
    # Exchange.start refuses these today, but answers with keep-alive: the connection must close
    pytest.param("missing", "X-A: 1\r\n"),
    pytest.param("duplicate", "Host: a.example\r\nHost: b.example\r\n"),
    pytest.param("duplicate-equal", "Host: a.example\r\nhost: a.example\r\n"),
    pytest.param("empty", "Host: \r\n"),
    # forwarded today
    pytest.param("space", "Host: a b\r\n"),
    pytest.param("slash", "Host: a.example/x\r\n"),
    pytest.param("dotdot", "Host: a..example\r\n"),
    pytest.param("userinfo", "Host: user@a.example\r\n"),
    pytest.param("two-ports", "Host: a.example:80:80\r\n"),
    pytest.param("port-range", "Host: a.example:65536\r\n"),
    pytest.param("non-ascii", "Host: caf\xc3\xa9.example\r\n"),
]


@pytest.mark.parametrize("name, lines", HOSTS, ids=[p.values[0] for p in HOSTS])
def test_host_rejected(gw, scripted, token, name, lines):
    _assert_rejected(gw, scripted, token, _head(token, lines))


def test_host_trailing_whitespace_is_not_part_of_it(shared_gateway, scripted, token):
    """llhttp keeps trailing whitespace in values; RFC 9112 §5 says it is not part of the field value. With
    preserve_host the upstream gets the Host without it."""
    cfg = {"services": [service("s", scripted.url, [route("r", ["/"], strip_path=False, preserve_host=True)])]}
    gw = shared_gateway(cfg)
    r = _served(gw, _head(token, "Host: h.example:8080 \t\r\n", target="/echo"))
    assert r is not None and r.status == 200
    assert b"\r\nHost: h.example:8080\r\n" in scripted.request_for(token).raw_head



def test_http10_without_host_is_served(gw, scripted, token):
    r = _served(gw, _head(token, "", version="HTTP/1.0", target="/public/echo"))
    assert r is not None and r.status == 200
    assert scripted.request_for(token).target == f"/P/public/echo?t={token}"


# ---- versions -----------------------------------------------------------------------------------------------------


def test_unknown_minor_version_rejected(gw, scripted, token):
    _assert_rejected(gw, scripted, token, _head(token, "Host: x\r\n", version="HTTP/1.2"))


def test_http2_version_on_http1_rejected(gw, scripted, token):
    """llhttp accepts ``HTTP/2.0`` in an HTTP/1 request line: 505 (RFC 9110 §15.6.6), as nginx answers."""
    _assert_rejected(gw, scripted, token, _head(token, "Host: x\r\n", version="HTTP/2.0"), 505)


def test_http09_request_rejected(gw, scripted, token):
    """llhttp takes ``GET /path`` with no version as HTTP/0.9: not served (505)."""
    _assert_rejected(gw, scripted, token, f"GET /public/echo?t={token}\r\n\r\n".encode(), 505)


# ---- underscores in field names -----------------------------------------------------------------------------------


def test_underscore_fields_dropped_by_default(gw, scripted, token):
    """nginx's default (underscores_in_headers off): CGI-style upstreams read X_Forwarded_For and X-Forwarded-For as
    the same variable, so the underscore spelling could override what the gateway set."""
    r = _served(gw, _head(token, "Host: x\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: v\r\nX-Dash: d\r\n"))
    assert r is not None and r.status == 200
    rec = scripted.request_for(token)
    assert "x_forwarded_for" not in rec.header_names() and "x_custom" not in rec.header_names()
    assert rec.header_all("x-dash") == ["d"]


def test_underscore_fields_kept_when_configured(shared_gateway, scripted, token):
    gw = shared_gateway(_config(scripted, underscores_in_headers=True))
    r = _served(gw, _head(token, "Host: x\r\nX_Custom: v\r\n"))
    assert r is not None and r.status == 200
    assert scripted.request_for(token).header_all("x_custom") == ["v"]


# ---- the path: one normalised form for routing, the access log and the upstream ----------------------------------

# (target sent, upstream target expected); the upstream path tells the route: /A admin, /P public, /O other
NORMALISED = [
    pytest.param("/public/%2e%2e/admin/echo", "/A/admin/echo", id="encoded-dotdot"),
    pytest.param("/public/%2E%2e/admin/echo", "/A/admin/echo", id="encoded-dotdot-mixed-case"),
    pytest.param("/public/.%2e/admin/echo", "/A/admin/echo", id="dot-and-encoded-dot"),
    pytest.param("/public/../admin/echo", "/A/admin/echo", id="dotdot"),
    pytest.param("/./admin/echo", "/A/admin/echo", id="leading-dot"),
    pytest.param("//admin/echo", "/A/admin/echo", id="double-slash"),
    pytest.param("/admin//echo", "/A/admin/echo", id="inner-double-slash"),
    pytest.param("/%61dmin/echo", "/A/admin/echo", id="encoded-letter"),
    pytest.param("/admin/%2e/echo", "/A/admin/echo", id="encoded-dot-segment"),
    pytest.param("/admin/x/../echo", "/A/admin/echo", id="dotdot-inside"),
    pytest.param("/public/%7e/echo", "/P/public/~/echo", id="encoded-tilde"),
    pytest.param("/public%2f..%2fadmin/echo", "/P/public%2F..%2Fadmin/echo", id="encoded-slash-lower"),
    pytest.param("/public/a%3ab/echo", "/P/public/a%3Ab/echo", id="reserved-escape-upper-cased"),
    # already in normal form: passed unchanged today and after
    pytest.param("/public%2F..%2Fadmin/echo", "/P/public%2F..%2Fadmin/echo", id="encoded-slash-kept"),
    pytest.param("/public/%252e%252e/admin/echo", "/P/public/%252e%252e/admin/echo", id="double-encoded-kept"),
    pytest.param("/public/..%2Fadmin/echo", "/P/public/..%2Fadmin/echo", id="dotdot-encoded-slash-kept"),
    pytest.param("/public/a;v=1/echo", "/P/public/a;v=1/echo", id="matrix-param-kept"),
    pytest.param("/public/...;/echo", "/P/public/...;/echo", id="three-dots-is-a-name"),
]


@pytest.mark.parametrize("target, upstream", NORMALISED)
def test_path_normalised_once(gw, scripted, token, target, upstream):
    r = _served(gw, _head(token, "Host: x\r\n", target=target))
    assert r is not None and r.status == 200, (r and r.status, r and r.body[:200])
    assert scripted.request_for(token).target == f"{upstream}?t={token}"
    log = gw.log_for(r.header("x-request-id"))
    want_route = {"A": "admin", "P": "public", "O": "other"}[upstream[1]]
    assert log["route"] == want_route
    assert log["path"] == upstream[2:]  # the access log has the path routing saw


def test_query_is_not_normalised(gw, scripted, token):
    target = f"/public/echo?t={token}&p=/a/../%2e%2e//b&q=%7e%2f"
    r = _served(gw, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert r is not None and r.status == 200
    assert scripted.request_for(token).target == "/P" + target


PATH_REJECTED = [
    ("dotdot-semicolon", "/public/..;/admin/echo"),
    ("dotdot-semicolon-params", "/public/..;jsessionid=1/admin/echo"),
    ("dot-semicolon", "/public/.;/admin/echo"),
    ("encoded-dotdot-semicolon", "/public/%2e%2e;/admin/echo"),
    ("admin-dotdot-semicolon", "/admin/..;/public/echo"),
    ("above-root", "/../admin/echo"),
    ("encoded-above-root", "/%2e%2e/admin/echo"),
    ("above-root-deep", "/public/../../admin/echo"),
    ("bad-escape-zz", "/public/%zz/echo"),
    ("bad-escape-lone", "/public/%/echo"),
    ("bad-escape-short", "/public/%e/echo"),
    ("bad-escape-end", "/public/echo%"),
    ("nul", "/public/%00/echo"),
    ("overlong-dot", "/public/%C0%AE%C0%AE/admin/echo"),
    ("overlong-slash", "/public/..%c0%afadmin/echo"),
    ("backslash", "/public\\..\\admin/echo"),
]


@pytest.mark.parametrize("name, target", [pytest.param(*p) for p in PATH_REJECTED],
                         ids=[n for n, _ in PATH_REJECTED])
def test_path_rejected(gw, scripted, token, name, target):
    _assert_rejected(gw, scripted, token, _head(token, "Host: x\r\n", target=target))


def test_fragment_rejected(gw, scripted, token):
    """A fragment is never part of a request target (RFC 9112 §3.2); Envoy rejects it too."""
    _assert_rejected(gw, scripted, token, f"GET /public/echo?t={token}#x HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_escaped_slashes_rejected_when_configured(shared_gateway, scripted, token):
    gw = shared_gateway(_config(scripted, escaped_slashes="reject"))
    _assert_rejected(gw, scripted, token, _head(token, "Host: x\r\n", target="/public%2F..%2Fadmin/echo"))


def test_merge_slashes_off_keeps_empty_segments(shared_gateway, scripted, token):
    gw = shared_gateway(_config(scripted, merge_slashes=False))
    r = _served(gw, _head(token, "Host: x\r\n", target="//admin/echo"))
    assert r is not None and r.status == 200
    assert scripted.request_for(token).target == f"/O//admin/echo?t={token}"


# ---- absolute form --------------------------------------------------------------------------------------------------


def test_absolute_form_normalised(gw, scripted, token):
    data = f"GET http://Example.TEST/public/../admin/echo?t={token} HTTP/1.1\r\nHost: other.test\r\n\r\n".encode()
    r = _served(gw, data)
    assert r is not None and r.status == 200
    rec = scripted.request_for(token)
    assert rec.target == f"/A/admin/echo?t={token}"
    assert rec.header_all("x-forwarded-host") == ["example.test"]


def test_absolute_form_with_userinfo_rejected(gw, scripted, token):
    data = f"GET http://user:pw@example.test/public/echo?t={token} HTTP/1.1\r\nHost: example.test\r\n\r\n"
    _assert_rejected(gw, scripted, token, data.encode())


def test_absolute_form_other_scheme_rejected(gw, scripted, token):
    data = f"GET ftp://example.test/public/echo?t={token} HTTP/1.1\r\nHost: example.test\r\n\r\n"
    _assert_rejected(gw, scripted, token, data.encode())


# ---- fuzzing: no crash, no hang ---------------------------------------------------------------------------------------

# Mostly well-formed heads with hostile parts (so most reach the gateway's own checks, not only llhttp's), some
# raw bytes anywhere.
_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TARGETS = st.lists(st.sampled_from(
    ["/", "/", "//", ".", "..", ";", "%2e", "%2F", "%25", "%", "%zz", "%00", "%C0%AE", "admin", "public", "echo",
     "#", "\\", "?", "&", "=", "a", "~", "http://h", "*", "@", ":"]), max_size=8).map("".join)
_NAMES = st.one_of(
    st.sampled_from(["Host", "host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "X_A", "Upgrade",
                     "Content_Length", "TE", "X-A", "Transfer_Encoding", "X-Forwarded-For", "Via"]),
    st.text(_TCHAR, min_size=1, max_size=12),
    st.binary(min_size=0, max_size=8).map(lambda b: b.decode("latin-1")),
)
_VALUES = st.one_of(
    st.sampled_from(["x", "h.example", "0", "5", "chunked", "gzip, chunked", "chunked, gzip", "close",
                     "keep-alive", "100-continue", "h2c", "-1", "", " ", "a b", "[::1]:80", "a..b", "u@h", "x "]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=16),
    st.binary(max_size=8).map(lambda b: b.decode("latin-1")),
)
_HEADS = st.builds(
    lambda method, target, version, host, fields, body: (
        f"{method} {target} {version}\r\n".encode("latin-1")
        + (b"Host: h.example\r\n" if host else b"")
        + b"".join(f"{n}:{v}\r\n".encode("latin-1") for n, v in fields) + b"\r\n" + body),
    st.sampled_from(["GET", "GET", "POST", "POST", "HEAD", "OPTIONS", "PUT", "get", "CONNECT"]),
    _TARGETS.map(lambda t: "/" + t if not t.startswith(("/", "h", "*")) else t),
    st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 2 + ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2"]),
    st.booleans(),
    st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    st.binary(max_size=24),
)


# No hypothesis deadline: each example is bounded by the socket timeouts below (3 s to answer, 3 s more to close after
# the client's EOF), and a miss is reported as a hang, which is what this test is for.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_HEADS)
def test_fuzz_request_heads(gw, data):
    """Whatever head arrives, the gateway answers or closes within seconds (a head whose body never comes is
    closed once the client shuts its side), and goes on serving."""
    with RawConnection(gw.host, gw.port, timeout=3.0) as c:
        c.send(data)
        try:
            c.read_head()
        except (PeerClosed, ConnectionResetError):
            pass
        except TimeoutError:
            # waiting for a body that will not come: the client's EOF must end it
            c.sock.shutdown(socket.SHUT_WR)
            try:
                c.read_until_close()
            except TimeoutError:
                raise AssertionError(f"no answer and no close for {data!r}") from None
    with RawConnection(gw.host, gw.port, timeout=5.0) as c:
        c.request("GET", f"/other/echo?alive={uuid.uuid4().hex}")
        assert c.read_response().status == 200


def test_fuzz_left_no_internal_error(gw):
    """Runs after the fuzz test (same shared gateway): nothing in its error log but request-level warnings."""
    bad = [ln for ln in gw.stderr_text().splitlines() if "Traceback" in ln or "callback failed" in ln]
    assert not bad, bad[:3]
