"""Property tests: whatever end-to-end request or response a client and upstream exchange (method, target, fields,
body), it crosses the gateway unchanged. Hypothesis generates the messages; every one goes over real sockets."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, crc32_of

RESERVED = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "upgrade", "expect", "via", "forwarded", "x-request-id", "x-real-ip", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-path", "x-forwarded-prefix", "date", "server",
}
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

names = st.text(TCHAR, min_size=1, max_size=20).map(lambda s: "X-" + s).filter(lambda n: n.lower() not in RESERVED)
values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).flatmap(
    lambda a: st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
        lambda b: (a + b + a).strip()))
headers = st.lists(st.tuples(names, values), max_size=12)
# Not dot segments, with or without ;parameters: the gateway resolves the first and refuses the second (Tomcat reads
# "..;" as ".."), see gwanmun/http/normalize.py.
segments = st.lists(st.text("abcXYZ019-._~!$&'()*+,;=:@", min_size=1, max_size=8).filter(
    lambda s: s.split(";", 1)[0] not in (".", "..")), max_size=4)
query = st.text("abcXYZ019-._~!$'()*+,;=:@/?%", max_size=30).map(lambda q: quote(q, safe="=&/:@!$'()*+,;"))
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
bodies = st.binary(max_size=70000)


def fold(hs):
    out: dict[str, list[str]] = {}
    for k, v in hs:
        out.setdefault(k.lower(), []).append(v)
    return {k: ", ".join(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def gw(shared_gateway, scripted):
    # Field names with "_" are dropped by default (nginx's underscores_in_headers off); here they must pass too.
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all",
                                         gateway={"underscores_in_headers": True}))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, segs=segments, q=query, hs=headers, body=bodies)
def test_request_passes_unchanged(gw, scripted, method, segs, q, hs, body):
    import uuid

    token = uuid.uuid4().hex
    target = "/" + "".join(s + "/" for s in segs) + "echo?t=" + token + ("&q=" + q if q else "")
    send_body = body if method in ("POST", "PUT", "PATCH", "DELETE") else None
    with RawConnection(gw.host, gw.port) as c:
        c.request(method, target, hs, send_body)
        r = c.read_response(method)
    assert r.status == 200, (r.status, r.body[:200])
    rec = scripted.request_for(token)
    assert rec.method == method
    assert rec.target == target
    got = fold((k, v) for k, v in rec.headers if k.lower() not in RESERVED)
    assert got == fold(hs)
    if send_body is not None:
        assert rec.body_len == len(send_body) and rec.body_crc32 == crc32_of(send_body)
    else:
        assert rec.body_len == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs=headers, status=st.sampled_from([200, 201, 203, 299, 400, 404, 410, 451, 500, 599]),
       body=st.binary(max_size=20000), te=st.sampled_from(["cl", "chunked"]))
def test_response_passes_unchanged(gw, scripted, hs, status, body, te):
    import uuid

    token = uuid.uuid4().hex
    # respond?n=N sends the first N pattern bytes; the body content itself is covered by the request test
    h_q = "".join("&h=" + quote(f"{k}:{v}", safe="") for k, v in hs)
    target = f"/respond?t={token}&status={status}&te={te}&n={len(body)}{h_q}"
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", target)
        r = c.read_response()
    assert r.status == status
    assert len(r.body) == len(body)
    got = fold((k, v) for k, v in r.headers if k.lower() not in RESERVED)
    assert got == fold(hs)
