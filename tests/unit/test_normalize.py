"""Request path normalisation (gwanmun.http.normalize): the named attacks, the RFC 3986 rules, and properties."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwanmun.http.normalize import normalize_path, parse_absolute_form, split_target, valid_host

# ---- the named attacks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, merged, unmerged", [
    # Tomcat-style path parameters on a dot segment: refused whatever follows
    ("/admin/..;/", None, None),
    ("/public/..;/admin", None, None),
    ("/public/..;jsessionid=1/admin", None, None),
    ("/public/.;/admin", None, None),
    ("/public/%2e%2e;/admin", None, None),
    ("/public/%2E.;x/admin", None, None),
    # encoded dots are dots (decoded before dot segments are removed)
    ("/public/%2e%2e/admin", "/admin", "/admin"),
    ("/public/%2E%2E/admin", "/admin", "/admin"),
    ("/public/.%2e/admin", "/admin", "/admin"),
    ("/a/%2e/b", "/a/b", "/a/b"),
    ("/%2e%2e/admin", None, None),  # climbs above the root
    # never decoded twice: %25 is '%', which is not unreserved, so it stays %25 and '2e' stays text
    ("/public/%252e%252e/admin", "/public/%252e%252e/admin", "/public/%252e%252e/admin"),
    ("/%252e", "/%252e", "/%252e"),
    ("/%25", "/%25", "/%25"),
    # %2F is never decoded: one segment, matched literally, hex upper-cased
    ("/admin%2Fusers", "/admin%2Fusers", "/admin%2Fusers"),
    ("/admin%2fusers", "/admin%2Fusers", "/admin%2Fusers"),
    ("/public/..%2Fadmin", "/public/..%2Fadmin", "/public/..%2Fadmin"),
    ("/public/%2e%2e%2Fadmin", "/public/..%2Fadmin", "/public/..%2Fadmin"),
    ("/a%5cb", "/a%5Cb", "/a%5Cb"),
    # slashes
    ("//admin", "/admin", "//admin"),
    ("///admin//x", "/admin/x", "///admin//x"),
    ("/a//../b", "/b", "/a/b"),  # merged first, as nginx
    ("/a//", "/a/", "/a//"),
    ("//", "/", "//"),
    # dot segments
    ("/./admin", "/admin", "/admin"),
    ("/a/./b/../c", "/a/c", "/a/c"),
    ("/a/.", "/a/", "/a/"),
    ("/a/b/..", "/a/", "/a/"),
    ("/a/..", "/", "/"),
    ("/.", "/", "/"),
    ("/..", None, None),
    ("/a/../..", None, None),
    ("/../admin", None, None),
    ("/a/.../b", "/a/.../b", "/a/.../b"),  # three dots is a name
    ("/a/..b/.c/b..", "/a/..b/.c/b..", "/a/..b/.c/b.."),
    ("/x/...;/y", "/x/...;/y", "/x/...;/y"),  # not a dot segment
    # invalid percent-escapes
    ("/%zz", None, None),
    ("/%", None, None),
    ("/a%", None, None),
    ("/%e", None, None),
    ("/%e/", None, None),
    ("/%%41", None, None),
    ("/%4g", None, None),
    ("/%-1", None, None),
    ("/% 1", None, None),
    # NUL
    ("/a%00b", None, None),
    ("/%00", None, None),
    # overlong UTF-8 (a dot / slash / backslash to lenient decoders)
    ("/%C0%AE%C0%AE/admin", None, None),
    ("/%c0%af", None, None),
    ("/%C1%9C", None, None),
    ("/%E0%80%AE", None, None),
    ("/%F0%80%80%AE", None, None),
    ("/%C0x%AE", "/%C0x%AE", "/%C0x%AE"),  # not adjacent: no sequence
    ("/caf%C3%A9", "/caf%C3%A9", "/caf%C3%A9"),  # valid UTF-8 stays encoded
    ("/%E0%A4%85", "/%E0%A4%85", "/%E0%A4%85"),
    # fragments and backslashes
    ("/a#b", None, None),
    ("/public#/../admin", None, None),
    ("/a\\b", None, None),
    ("/public\\..\\admin", None, None),
])
def test_named_attacks(raw, merged, unmerged):
    assert normalize_path(raw, True) == merged
    assert normalize_path(raw, False) == unmerged


@pytest.mark.parametrize("raw, want", [
    ("/%61dmin", "/admin"),
    ("/%41%42%43", "/ABC"),
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%2D%2E%5F%7E%30", "/-._~0"),
    ("/a%3ab", "/a%3Ab"),  # ':' is reserved: stays encoded, upper-cased
    ("/a%3Bb", "/a%3Bb"),
    ("/%20x", "/%20x"),
    ("/%ff", "/%FF"),
    ("/a%2Fb/%2e/c", "/a%2Fb/c"),
])
def test_percent_encoding(raw, want):
    assert normalize_path(raw) == want


@pytest.mark.parametrize("raw", ["/", "/a", "/api/v1/users/12345/orders", "/a;v=1/b", "/x.json", "/a-b_c~d",
                                 "/a/b/", "/UPPER/lower", "/v1.2/x", "/@:!$&'()*+,="])
def test_plain_paths_unchanged(raw):
    out = normalize_path(raw)
    assert out == raw
    assert out is raw  # the fast path hands back the same object


@pytest.mark.parametrize("raw", ["", "a", "*", "abc/", "%2F"])
def test_must_start_with_slash(raw):
    assert normalize_path(raw) is None


def test_reject_escaped_slashes():
    assert normalize_path("/a%2Fb", True, True) is None
    assert normalize_path("/a%2fb", True, True) is None
    assert normalize_path("/a%5Cb", True, True) is None
    assert normalize_path("/a%5cb", True, True) is None
    assert normalize_path("/a%2Eb%3A", True, True) == "/a.b%3A"
    assert normalize_path("/a/b", True, True) == "/a/b"


# ---- request targets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, want", [
    (b"/a?b", ("/a", b"/a", b"?b", b"")),
    (b"/a?", ("/a", b"/a", b"?", b"")),
    (b"/%2e%2e/x?q=%2e%2e/../x", None),  # the path climbs above the root
    (b"/p/%2e%2e/x?q=%2e%2e/../x", ("/x", b"/x", b"?q=%2e%2e/../x", b"")),  # the query is kept as sent
    (b"/a?b#c", None),  # a fragment is never part of a request target
    (b"/a#b?c", None),
    (b"*", ("*", b"*", b"", b"")),
    (b"http://Example.COM:8080/a/../b?x=1", ("/b", b"/b", b"?x=1", b"example.com:8080")),
    (b"HTTPS://ex.com:/", ("/", b"/", b"", b"ex.com")),
    (b"http://ex.com", ("/", b"/", b"", b"ex.com")),
    (b"http://ex.com?x", ("/", b"/", b"?x", b"ex.com")),
    (b"http://[::1]:8/a", ("/a", b"/a", b"", b"[::1]:8")),
    (b"http://ex.com//a", ("/a", b"/a", b"", b"ex.com")),
    (b"http://user@ex.com/", None),
    (b"http://user:pw@ex.com/", None),
    (b"ftp://ex.com/", None),
    (b"http:///a", None),
    (b"http://ex.com:99999/", None),
    (b"http://ex.com:8x/", None),
    (b"http://ex.com#f", None),
    (b"http://ex..com/", None),
    (b"ex.com:443", None),  # authority form (CONNECT): not served
    (b"a/b", None),
    (b"", None),
])
def test_split_target(url, want):
    assert split_target(url) == want


def test_split_target_hands_back_the_slice_when_unchanged():
    url = b"/api/v1/users?x=1"
    path, path_b, _, _ = split_target(url)
    assert path == "/api/v1/users" and path_b == b"/api/v1/users"
    path2, path_b2, _, _ = split_target(b"/api/./v1/users?x=1")
    assert (path2, path_b2) == (path, path_b)


def test_split_target_settings():
    assert split_target(b"//a//b?x") == ("/a/b", b"/a/b", b"?x", b"")
    assert split_target(b"//a//b?x", False) == ("//a//b", b"//a//b", b"?x", b"")
    assert split_target(b"/a%2Fb", True, True) is None
    assert split_target(b"/a%2Fb?x", True, False) == ("/a%2Fb", b"/a%2Fb", b"?x", b"")


def test_parse_absolute_form_keeps_path_raw():
    assert parse_absolute_form(b"http://h/a/%2e%2e/b?q") == (b"/a/%2e%2e/b", b"?q", b"h")


@pytest.mark.parametrize("host, ok", [
    (b"example.com", True), (b"example.com:8000", True), (b"EXAMPLE.com", True), (b"1.2.3.4", True),
    (b"1.2.3.4:80", True), (b"[::1]", True), (b"[::1]:8000", True), (b"[2001:db8::a]", True), (b"x_y", True),
    (b"h:", True), (b"h:65535", True),
    (b"", False), (b"a b", False), (b"a/b", False), (b"a\\b", False), (b"user@h", False), (b"a..b", False),
    (b"..", False), (b"h:65536", False), (b"h:123456", False), (b"h:8x", False), (b"h:1:2", False), (b":80", False),
    (b"[::1", False), (b"::1]", False), (b"[::1]x", False), (b"[::1]:", True), (b"[]", False), (b"[g::1]", False),
    (b"a%41", False), (b"caf\xc3\xa9", False), (b"h\t", False), (b"a[b]", False),
])
def test_valid_host(host, ok):
    assert valid_host(host) is ok


# ---- properties ----------------------------------------------------------------------------------------------------

# Each call takes microseconds; the deadline only catches a pathological (say quadratic) case, with room for a
# loaded CI machine.
DEADLINE = timedelta(milliseconds=500)

# Paths built from the characters that matter (separators, dots, escapes of every kind, ';', a few letters), so the
# interesting cases are frequent; plus arbitrary bytes.
_PIECES = st.sampled_from([
    "/", "//", ".", "..", "./", "../", "/./", "/../", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%252e", "%41", "%7e",
    "%00", "%", "%z", "%C0", "%AE", "%E0", "%80", ";", "..;", ".;", "a", "b", "~", "-", "#", "?", "\\", "%3b",
])
interesting = st.lists(_PIECES, max_size=14).map(lambda p: "/" + "".join(p))
arbitrary = st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|\Z)")  # \Z, not $: "$" also matches before a final newline


def _check(raw: str, merge: bool) -> None:
    out = normalize_path(raw, merge)
    if out is None:
        return
    assert out.startswith("/")
    assert not _DOT_SEGMENT.search(out), (raw, out)
    assert "/./" not in out and "/../" not in out
    assert normalize_path(out, merge) == out, (raw, out)  # idempotent
    if merge:
        assert "//" not in out
    assert "#" not in out and "\\" not in out
    # every escape left is valid, upper-case, not of an unreserved character, not %00
    for m in re.finditer(r"%(..)", out):
        h = m.group(1)
        assert re.fullmatch(r"[0-9A-F]{2}", h), (raw, out)
        assert h != "00"
        assert not re.fullmatch(r"[A-Za-z0-9._~-]", chr(int(h, 16))), (raw, out)
    assert out.count("%") == len(re.findall(r"%[0-9A-F]{2}", out))


@settings(max_examples=400, deadline=DEADLINE)
@given(raw=interesting, merge=st.booleans())
def test_property_interesting(raw, merge):
    _check(raw, merge)


@settings(max_examples=300, deadline=DEADLINE)
@given(raw=arbitrary, merge=st.booleans())
def test_property_arbitrary(raw, merge):
    _check(raw, merge)
    _check("/" + raw, merge)


@settings(max_examples=300, deadline=DEADLINE)
@given(raw=st.binary(max_size=80), merge=st.booleans(), reject=st.booleans())
def test_property_split_target_never_crashes(raw, merge, reject):
    for url in (raw, b"/" + raw, b"http://h/" + raw, b"http://" + raw):
        out = split_target(url, merge, reject)
        if out is not None:
            path, path_b, query, authority = out
            assert path_b == path.encode("latin-1")
            assert path == "*" or (path.startswith("/") and normalize_path(path, merge, reject) == path)
            assert query == b"" or query.startswith(b"?")
            assert authority == b"" or valid_host(authority)


def _unquote_unreserved(seg: str) -> str:
    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if re.fullmatch(r"[A-Za-z0-9._~-]", ch) else m.group(0)

    return re.sub(r"%([0-9A-Fa-f]{2})", one, seg)


def _resolve(segments: list[str]) -> list[str]:
    """RFC 3986 §5.2.4 over a list of segments (the caller knows it never climbs above the root)."""
    kept: list[str] = []
    for i, s in enumerate(segments):
        if s in (".", ".."):
            if s == "..":
                kept.pop()
            if i == len(segments) - 1:
                kept.append("")
        else:
            kept.append(s)
    return kept


@settings(max_examples=300, deadline=DEADLINE)
@given(raw=interesting)
def test_property_same_resource(raw):
    """An independent reading: decode the unreserved escapes of each segment, resolve dot segments, then fully
    percent-decode each segment. The normalised path must read the same, segment by segment (so a decoding
    upstream serves the same resource), whenever it is not refused."""
    out = normalize_path(raw, False)
    if out is None:
        return
    want = [unquote(s, errors="surrogateescape") for s in _resolve([_unquote_unreserved(s) for s in raw.split("/")[1:]])]
    got = [unquote(s, errors="surrogateescape") for s in out.split("/")[1:]]
    assert got == want, (raw, out)


@pytest.mark.parametrize("raw", [
    "/a" * 4096, "/." * 4096, "/%2e" * 2048, "/%41" * 2048, "/" * 8192, "/x/.." * 1600 + "/y", "/%2F" * 2048,
    "/" + "%" * 8000, "/" + ";" * 8000, "/..;" * 2000,
])
def test_long_paths_stay_linear(raw):
    """A request line may be 8 KiB (gateway.max_request_line): worst cases finish in well under a millisecond each."""
    t = time.perf_counter()
    for _ in range(20):
        normalize_path(raw, True)
        normalize_path(raw, False)
    assert time.perf_counter() - t < 1.0
