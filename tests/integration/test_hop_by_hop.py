"""Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions: ``Connection``, every field it lists, and
``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``. End-to-end fields,
including repeated ones and their order, pass unchanged."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection

ALWAYS_HOP = {"keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


def _send(gw, target, headers, body=None, method="GET"):
    with RawConnection(gw.host, gw.port) as c:
        c.request(method, target, headers, body)
        return c.read_response(method)


def test_request_hop_by_hop_removed(gw, scripted, token):
    hs = [
        ("Connection", "keep-alive, X-Drop-One, x-drop-TWO"),
        ("Connection", "X-Drop-Three"),
        ("X-Drop-One", "1"),
        ("X-Drop-Two", "2"),
        ("X-Drop-Three", "3"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers, deflate"),
        ("Trailer", "X-Checksum"),
        ("X-Keep", "yes"),
    ]
    r = _send(gw, f"/echo?t={token}", hs)
    assert r.status == 200
    rec = scripted.request_for(token)
    names = rec.header_names()
    for gone in ("x-drop-one", "x-drop-two", "x-drop-three"):
        assert gone not in names, f"{gone} (listed in Connection) forwarded: {rec.headers}"
    for gone in ALWAYS_HOP:
        assert gone not in names, f"hop-by-hop {gone} forwarded: {rec.headers}"
    for v in rec.header_all("connection"):
        assert "x-drop" not in v.lower(), f"client's Connection tokens forwarded: {v!r}"
    assert rec.header("x-keep") == "yes"


def test_request_end_to_end_fields_kept_in_order(gw, scripted, token):
    hs = [("X-Multi", "a"), ("X-Other", "o"), ("X-Multi", "b, c"), ("Cookie", "k=v"), ("Authorization", "Bearer t"),
          ("Cache-Control", "no-cache"), ("Accept", "text/html;q=0.9, */*;q=0.1")]
    r = _send(gw, f"/echo?t={token}", hs)
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.header_all("x-multi") == ["a", "b, c"] or rec.header_all("x-multi") == ["a, b, c"]
    for k, v in hs[3:]:
        assert rec.header(k) == v
    assert rec.header("x-other") == "o"


def test_response_hop_by_hop_removed(gw, token):
    hs = [
        "Connection:X-Secret, x-other-SECRET",
        "X-Secret:s3cret",
        "X-Other-Secret:also",
        "Keep-Alive:timeout=99, max=7",
        "Proxy-Connection:keep-alive",
        "Trailer:X-Foo",
        "Upgrade:h2c",
        "X-Public:ok",
        "Set-Cookie:a=1",
        "Set-Cookie:b=2",
    ]
    q = "&".join(f"h={h.replace(' ', '%20')}" for h in hs)
    r = _send(gw, f"/respond?t={token}&body=payload&{q}", [])
    assert r.status == 200 and r.body == b"payload"
    names = r.header_names()
    assert "x-secret" not in names and "x-other-secret" not in names, r.headers
    assert "proxy-connection" not in names and "trailer" not in names and "upgrade" not in names, r.headers
    assert "timeout=99, max=7" not in r.header_all("keep-alive"), "upstream's Keep-Alive relayed"
    assert not ({"x-secret", "x-other-secret"} & r.connection_tokens()), "upstream's Connection tokens relayed"
    assert r.header("x-public") == "ok"
    assert r.header_all("set-cookie") == ["a=1", "b=2"]


def test_response_transfer_encoding_is_hop_by_hop(gw, token):
    """The upstream's chunked framing is decoded: the client sees the body, never the upstream's chunk headers."""
    r = _send(gw, f"/respond?t={token}&body=abcdef&te=chunked", [])
    assert r.status == 200 and r.body == b"abcdef"


def test_request_content_length_not_duplicated(gw, scripted, token):
    r = _send(gw, f"/echo?t={token}", [("Content-Type", "text/plain")], b"12345", "POST")
    assert r.status == 200
    rec = scripted.request_for(token)
    assert rec.body_len == 5
    framing = rec.header_all("content-length") + rec.header_all("transfer-encoding")
    assert len(framing) == 1, f"request framing headers upstream: {framing}"
