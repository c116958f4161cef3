"""Request-head checks (gwanmun.http.validate) and the gateway settings that drive them and path normalisation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwanmun.config import load_text
from gwanmun.config.compile import compile_settings
from gwanmun.errors import ConfigError
from gwanmun.http.validate import check_request_head

BASE = [(b"Host", b"example.com"), (b"User-Agent", b"curl/8"), (b"Accept", b"*/*")]


def check(headers, version="1.1", underscores=False):
    hs = list(headers)
    return check_request_head(version, hs, underscores), hs


def test_common_request_passes_unchanged():
    hs = BASE + [(b"Content-Length", b"12"), (b"X-Forwarded-For", b"1.2.3.4")]
    result, out = check(hs)
    assert result is None
    assert out == hs


@pytest.mark.parametrize("version, status", [("1.1", None), ("1.0", None), ("2.0", 505), ("0.9", 505),
                                             ("1.2", 505), ("", 505)])
def test_versions(version, status):
    result, _ = check(BASE, version)
    assert (result and result[0]) == status


@pytest.mark.parametrize("headers, version, reason", [
    ([], "1.1", "missing Host header"),
    ([(b"X-A", b"1")], "1.1", "missing Host header"),
    ([(b"Host", b"a"), (b"Host", b"b")], "1.1", "duplicate Host header"),
    ([(b"Host", b"a"), (b"host", b"a")], "1.1", "duplicate Host header"),  # even when equal
    ([(b"Host", b"a"), (b"HOST", b"b")], "1.0", "duplicate Host header"),
    ([(b"Host", b"")], "1.1", "invalid Host header"),
    ([(b"Host", b"")], "1.0", "invalid Host header"),
    ([(b"Host", b"a b")], "1.1", "invalid Host header"),
    ([(b"Host", b"a/b")], "1.1", "invalid Host header"),
    ([(b"Host", b"evil.com/../x")], "1.1", "invalid Host header"),
    ([(b"Host", b"user@h")], "1.1", "invalid Host header"),
    ([(b"Host", b"h:80:80")], "1.1", "invalid Host header"),
    ([(b"Host", b"h\xc3\xa9")], "1.1", "invalid Host header"),
    ([(b"Host", b" ")], "1.1", "invalid Host header"),
])
def test_host_rules(headers, version, reason):
    result, _ = check(headers, version)
    assert result == (400, reason)


def test_http10_without_host_passes():
    assert check([(b"Accept", b"*/*")], "1.0")[0] is None


def test_host_trailing_whitespace_stripped_in_place():
    result, out = check([(b"Host", b"example.com:80 \t"), (b"X-A", b"v ")])
    assert result is None
    assert out == [(b"Host", b"example.com:80"), (b"X-A", b"v ")]  # other values are left alone


@pytest.mark.parametrize("headers, version, expected", [
    ([(b"Transfer-Encoding", b"chunked")], "1.1", None),
    ([(b"Transfer-Encoding", b"Chunked")], "1.1", None),
    ([(b"transfer-encoding", b" chunked ")], "1.1", None),
    ([(b"Transfer-Encoding", b"chunked")], "1.0", (400, "Transfer-Encoding on an HTTP/1.0 request")),
    ([(b"Transfer-Encoding", b"gzip")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"identity")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunked, gzip")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"gzip")], "1.1",
     (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunked, chunked")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], "1.1",
     (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunkedx")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b",")], "1.1", (400, "unsupported Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"gzip, chunked")], "1.1", (501, "Transfer-Encoding other than chunked is not implemented")),
    ([(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")], "1.1",
     (501, "Transfer-Encoding other than chunked is not implemented")),
    ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], "1.1",
     (400, "Content-Length with Transfer-Encoding")),
    ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], "1.1",
     (400, "Content-Length with Transfer-Encoding")),
])
def test_transfer_encoding(headers, version, expected):
    assert check([(b"Host", b"h")] + headers, version)[0] == expected


@pytest.mark.parametrize("values, expected", [
    ([b"0"], None),
    ([b"12"], None),
    ([b"003"], None),
    ([b"12 "], None),  # trailing OWS, kept by llhttp
    ([b"5", b"5"], None),  # llhttp refuses any repeat; equal values would be fine by RFC 9110 §8.6
    ([b"5", b"6"], (400, "conflicting Content-Length")),
    ([b"abc"], (400, "invalid Content-Length")),
    ([b"-1"], (400, "invalid Content-Length")),
    ([b"+1"], (400, "invalid Content-Length")),
    ([b"1,1"], (400, "invalid Content-Length")),
    ([b""], (400, "invalid Content-Length")),
    ([b"0x10"], (400, "invalid Content-Length")),
    ([b"\xd9\xa3"], (400, "invalid Content-Length")),  # a non-ASCII digit
])
def test_content_length(values, expected):
    assert check([(b"Host", b"h")] + [(b"Content-Length", v) for v in values])[0] == expected


def test_underscore_fields_dropped_by_default():
    hs = [(b"Host", b"h"), (b"X_Forwarded_For", b"6.6.6.6"), (b"X-Keep", b"1"), (b"Content_Length", b"999"),
          (b"_", b"x"), (b"x-a_b", b"y")]
    result, out = check(hs)
    assert result is None
    assert out == [(b"Host", b"h"), (b"X-Keep", b"1")]


def test_underscore_fields_kept_when_allowed():
    hs = [(b"Host", b"h"), (b"X_Custom", b"v")]
    result, out = check(hs, underscores=True)
    assert result is None
    assert out == hs


def test_underscore_field_is_not_taken_for_its_dashed_twin():
    """``Content_Length``/``Transfer_Encoding`` are not framing fields: they neither conflict nor count."""
    hs = [(b"Host", b"h"), (b"Content-Length", b"3"), (b"Content_Length", b"4"), (b"Transfer_Encoding", b"gzip")]
    assert check(hs)[0] is None
    assert check(hs, underscores=True)[0] is None


def test_same_list_object_is_filtered():
    hs = [(b"Host", b"h"), (b"A_B", b"1")]
    check_request_head("1.1", hs, False)
    assert hs == [(b"Host", b"h")]


_names = st.binary(min_size=0, max_size=20)
_values = st.binary(max_size=30)
_special = st.sampled_from([b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"X_A", b"Content_Length"])


@settings(max_examples=400, deadline=timedelta(milliseconds=500))
@given(
    version=st.sampled_from(["1.1", "1.0", "2.0", "0.9"]),
    headers=st.lists(st.tuples(st.one_of(_names, _special), _values), max_size=12),
    underscores=st.booleans(),
)
def test_property_never_crashes_and_filters(version, headers, underscores):
    hs = list(headers)
    result = check_request_head(version, hs, underscores)
    if result is None:
        assert version in ("1.0", "1.1")
        if not underscores:
            assert all(b"_" not in n for n, _ in hs)
        hosts = [v for n, v in hs if n.lower() == b"host"]
        assert len(hosts) <= 1
        if version == "1.1":
            assert hosts
    else:
        status, reason = result
        assert status in (400, 501, 505) and reason


# ---- the gateway settings ------------------------------------------------------------------------------------------


def _gateway(text: str):
    return load_text('_format_version: "3.0"\ngateway: {' + text + "}\n").config.gateway


def test_defaults():
    gw = _gateway("")
    assert (gw.underscores_in_headers, gw.merge_slashes, gw.escaped_slashes) == (False, True, "keep")
    s = compile_settings(gw)
    assert (s.underscores_in_headers, s.merge_slashes, s.reject_escaped_slashes) == (False, True, False)


def test_settings_compiled():
    s = compile_settings(_gateway("underscores_in_headers: true, merge_slashes: false, escaped_slashes: reject"))
    assert (s.underscores_in_headers, s.merge_slashes, s.reject_escaped_slashes) == (True, False, True)


@pytest.mark.parametrize("text, message", [
    ("escaped_slashes: decode", "invalid value 'decode'"),
    ("merge_slashes: 1", "expected a boolean"),
    ("underscores_in_headers: 'on'", "expected a boolean"),
    ("nginx_http_underscores_in_headers: true", "gwanmun calls this setting 'underscores_in_headers'"),
    ("nginx_proxy_merge_slashes: false", "gwanmun calls this setting 'merge_slashes'"),
])
def test_rejected(text, message):
    with pytest.raises(ConfigError, match=message):
        _gateway(text)
