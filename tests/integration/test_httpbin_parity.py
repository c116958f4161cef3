"""httpbin through the gateway vs. the same request sent directly: status, end-to-end headers and body must match.

The route is ``paths: ["/"]`` with ``strip_path: false`` so targets pass unchanged, and the gateway sets ``Host`` to
the upstream's, so httpbin's echoes (``url``, absolute redirects) come out the same both ways. What a proxy must
change is ignored (see ``tests/fixtures/compare.py``).
"""

from __future__ import annotations

import gzip
import json

import pytest

from tests.fixtures.compare import assert_same_response, fetch, normalise_httpbin_echo
from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection

UA = [("User-Agent", "gwanmun-integration/1"), ("Accept", "*/*")]


@pytest.fixture
def gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


def both(gw, httpbin, method, target, headers=None, body=None):
    hs = UA + list(headers or [])
    direct = fetch(httpbin.host, httpbin.port, method, target, hs, body)
    via = fetch(gw.host, gw.port, method, target, hs, body)
    return direct, via


def assert_same_echo(direct, via, method="GET"):
    """For httpbin endpoints that echo the request: headers and framing as usual, JSON equal once proxy-added
    request fields are removed."""
    assert_same_response(direct, via, compare_body=False, method=method)
    assert normalise_httpbin_echo(via.json()) == normalise_httpbin_echo(direct.json())


def test_get(gw, httpbin):
    direct, via = both(gw, httpbin, "GET", "/get?a=1&b=two&b=three&c=%20x%2F", [("X-Custom", "abc")])
    assert via.status == 200
    assert_same_echo(direct, via)
    doc = via.json()
    assert doc["args"] == {"a": "1", "b": ["two", "three"], "c": " x/"}
    assert doc["headers"]["X-Custom"] == "abc"
    assert doc["url"] == direct.json()["url"], "Host or target changed on the way"


STATUS_CODES = [200, 201, 202, 203, 204, 205, 206, 301, 302, 303, 304, 307, 308, 400, 401, 402, 403, 404, 405,
                406, 409, 410, 412, 413, 415, 418, 422, 429, 451, 500, 501, 502, 503, 504]


@pytest.mark.parametrize("code", STATUS_CODES)
def test_status_codes(gw, httpbin, code):
    direct, via = both(gw, httpbin, "GET", f"/status/{code}")
    assert direct.status == code
    assert_same_response(direct, via)
    # an upstream's own 5xx is relayed as is, not replaced by a gateway error body
    assert via.body == direct.body


@pytest.mark.parametrize("code", [200, 204, 304, 418, 500])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_status_codes_other_methods(gw, httpbin, code, method):
    direct, via = both(gw, httpbin, method, f"/status/{code}", [("Content-Type", "text/plain")], b"payload")
    assert direct.status == code
    assert_same_response(direct, via, method=method)


def test_headers_endpoint(gw, httpbin):
    hs = [("X-One", "1"), ("X-Two", "two words"), ("Accept-Language", "ko-KR, en;q=0.5"), ("Cookie", "a=b; c=d")]
    direct, via = both(gw, httpbin, "GET", "/headers", hs)
    assert_same_echo(direct, via)
    sent = via.json()["headers"]
    for k, v in hs:
        assert sent[k] == v


def test_redirect_relative_location_unchanged(gw, httpbin):
    direct, via = both(gw, httpbin, "GET", "/redirect/2")
    assert via.status == 302
    assert_same_response(direct, via)
    assert via.header("location") == direct.header("location") == "/relative-redirect/1"
    # and the chain can be followed through the gateway to the end
    nxt = fetch(gw.host, gw.port, "GET", via.header("location"), UA)
    assert nxt.status == 302 and nxt.header("location") == "/get"
    end = fetch(gw.host, gw.port, "GET", "/get", UA)
    assert end.status == 200


def test_absolute_redirect_location_unchanged(gw, httpbin):
    direct, via = both(gw, httpbin, "GET", "/absolute-redirect/1")
    assert via.status == 302
    assert_same_response(direct, via)
    assert via.header("location") == f"http://{httpbin.hostport}/get"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_to(gw, httpbin, status):
    target = "/redirect-to?url=http%3A%2F%2Fexample.com%2Fa%2Fb%3Fq%3D1%26r%3D%252F&status_code=" + str(status)
    direct, via = both(gw, httpbin, "GET", target)
    assert via.status == status
    assert_same_response(direct, via)
    assert via.header("location") == "http://example.com/a/b?q=1&r=%2F"


def test_gzip_kept_compressed(gw, httpbin):
    direct, via = both(gw, httpbin, "GET", "/gzip", [("Accept-Encoding", "gzip")])
    assert via.status == 200
    assert via.header("content-encoding") == "gzip"
    assert_same_response(direct, via, compare_body=False)
    # the body arrives as the upstream sent it: valid gzip, declared length, same JSON once decompressed
    assert via.header("content-length") in (None, str(len(via.body)))
    d = json.loads(gzip.decompress(direct.body))
    v = json.loads(gzip.decompress(via.body))
    assert v["gzipped"] is True
    assert normalise_httpbin_echo(v) == normalise_httpbin_echo(d)


def test_gzip_bytes_identical(gw, scripted, shared_gateway):
    """A fixed gzip body is relayed byte for byte, whether or not the client advertised gzip."""
    from tests.fixtures.upstreams import GZIP_BODY

    sgw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))
    for hs in ([("Accept-Encoding", "gzip")], [("Accept-Encoding", "identity")], []):
        via = fetch(sgw.host, sgw.port, "GET", "/gzip", hs)
        assert via.status == 200
        assert via.header("content-encoding") == "gzip"
        assert via.body == GZIP_BODY
        assert via.header("content-length") in (None, str(len(GZIP_BODY)))


@pytest.mark.parametrize("n", [0, 1, 1000, 65536, 102400])
def test_bytes(gw, httpbin, n):
    direct, via = both(gw, httpbin, "GET", f"/bytes/{n}?seed=7")
    assert via.status == 200 and len(via.body) == n
    assert_same_response(direct, via)


def test_post_json(gw, httpbin):
    body = json.dumps({"name": "관문", "list": [1, 2, 3], "nested": {"a": None, "b": True}}).encode()
    direct, via = both(gw, httpbin, "POST", "/post", [("Content-Type", "application/json")], body)
    assert via.status == 200
    assert_same_echo(direct, via, "POST")
    assert via.json()["json"] == json.loads(body)


def test_post_form_urlencoded(gw, httpbin):
    body = b"a=1&b=hello+world&b=again&c=%ED%95%9C"
    direct, via = both(gw, httpbin, "POST", "/post", [("Content-Type", "application/x-www-form-urlencoded")], body)
    assert_same_echo(direct, via, "POST")
    assert via.json()["form"] == {"a": "1", "b": ["hello world", "again"], "c": "한"}


def test_post_multipart(gw, httpbin):
    boundary = "gwanmunBoundary7MA4YWxk"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
        f"Content-Type: text/plain\r\n\r\nfile contents\n\r\n--{boundary}--\r\n"
    ).encode()
    hs = [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    direct, via = both(gw, httpbin, "POST", "/post", hs, body)
    assert_same_echo(direct, via, "POST")
    assert via.json()["form"] == {"field": "value"}
    assert via.json()["files"] == {"file": "file contents\n"}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"])
def test_anything_all_methods(gw, httpbin, method):
    body = None
    hs = []
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        body = b'{"m": "%s"}' % method.encode()
        hs = [("Content-Type", "application/json")]
    direct, via = both(gw, httpbin, method, f"/anything/x/y?m={method}", hs, body)
    assert direct.status == 200
    if method == "OPTIONS":  # Flask answers OPTIONS itself with an Allow list and an empty body
        assert_same_response(direct, via, method=method)
        return
    assert_same_echo(direct, via, method)
    assert via.json()["method"] == method
    if body:
        assert via.json()["json"] == json.loads(body)


@pytest.mark.parametrize("target", ["/bytes/5000?seed=3", "/status/418", "/html", "/robots.txt", "/image/png",
                                    "/status/404", "/stream/3", "/gzip"])
def test_head_same_headers_no_body(gw, httpbin, target):
    hs = [("Accept-Encoding", "gzip")] if target == "/gzip" else []
    direct, via = both(gw, httpbin, "HEAD", target, hs)
    if target in ("/stream/3", "/gzip"):  # bodies that echo the request: their lengths differ via a proxy
        assert via.status == direct.status
        assert via.body == b""
        return
    assert_same_response(direct, via, method="HEAD")


def test_head_then_get_on_same_connection(gw):
    """After a HEAD response (Content-Length but no body) the connection must still be in sync."""
    with RawConnection(gw.host, gw.port) as c:
        c.request("HEAD", "/bytes/4096?seed=1", UA)
        h = c.read_response("HEAD")
        assert h.status == 200 and h.header("content-length") == "4096" and h.body == b""
        c.request("GET", "/bytes/16?seed=1", UA)
        g = c.read_response()
        assert g.status == 200 and len(g.body) == 16
        c.request("HEAD", "/stream/2", UA)
        h2 = c.read_response("HEAD")
        assert h2.status == 200 and h2.body == b""
        c.request("GET", "/get?after=head", UA)
        g2 = c.read_response()
        assert g2.status == 200 and g2.json()["args"] == {"after": "head"}
