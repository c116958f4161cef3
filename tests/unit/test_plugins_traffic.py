"""Traffic plugins on a fake context: ip-restriction, cors, request-size-limiting, request-termination, correlation-id,
request-transformer, response-transformer (docs/plugins-traffic.md)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from gwanmun.plugins.base import BuildEnv, Ctx, Headers, Reply, Response, implements
from gwanmun.plugins.correlation_id import CorrelationId
from gwanmun.plugins.cors import Cors
from gwanmun.plugins.ip_restriction import IpRestriction
from gwanmun.plugins.request_size_limiting import RequestSizeLimiting
from gwanmun.plugins.request_termination import RequestTermination
from gwanmun.plugins.request_transformer import RequestTransformer
from gwanmun.plugins.response_transformer import ResponseTransformer, is_json_type

ENV = BuildEnv()


def make(cls, cfg=None):
    return cls(cls.Config.model_validate(cfg or {}), ENV)


def ctx(method="GET", path="/x", query=b"?a=1&b=2", headers=None, client_ip="10.0.0.1"):
    hs = [(b"Origin", b"https://a.example")] if headers is None else headers
    hs = [(n.encode("latin-1"), v.encode("latin-1")) if isinstance(n, str) else (n, v) for n, v in hs]
    return Ctx(ex=None, method=method, path=path, query=query, headers=Headers(hs), client_ip=client_ip,
               route=SimpleNamespace(name="r", id=None), service=SimpleNamespace(name="s", id=None),
               request_id="rid", started=0.0)


def response(status=200, headers=()):
    return Response(status, Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]))


def invalid(cls, cfg, message):
    with pytest.raises(ValidationError) as e:
        cls.Config.model_validate(cfg)
    assert message in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------------------------
# ip-restriction
# ---------------------------------------------------------------------------------------------------------------------
IP_CASES = [
    ("allow-hit", {"allow": ["10.0.0.1"]}, "10.0.0.1", None),
    ("allow-cidr", {"allow": ["10.0.0.0/8"]}, "10.9.8.7", None),
    ("allow-miss", {"allow": ["10.0.0.0/24"]}, "10.0.1.1", 403),
    ("deny-hit", {"deny": ["10.0.0.0/8"]}, "10.0.0.1", 403),
    ("deny-miss", {"deny": ["10.0.0.0/8"]}, "192.168.1.1", None),
    ("deny-wins", {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.1"]}, "10.0.0.1", 403),
    ("both-allowed", {"allow": ["10.0.0.0/8"], "deny": ["10.0.0.1"]}, "10.0.0.2", None),
    ("host-bits-cidr", {"allow": ["127.0.0.1/8"]}, "127.5.5.5", None),
    ("v6-cidr", {"allow": ["2001:db8::/32"]}, "2001:db8::1", None),
    ("v6-miss", {"allow": ["2001:db8::/32"]}, "2001:db9::1", 403),
    ("v6-exact-deny", {"deny": ["::1"]}, "::1", 403),
    ("v4-mapped-client", {"deny": ["10.0.0.1"]}, "::ffff:10.0.0.1", 403),
    ("v4-mapped-rule", {"deny": ["::ffff:10.0.0.0/104"]}, "10.0.0.7", 403),
    ("v4-not-in-v6-list", {"allow": ["::/0"]}, "10.0.0.1", 403),
    ("custom-status", {"deny": ["10.0.0.1"], "status": 401, "message": "go away"}, "10.0.0.1", 401),
]


@pytest.mark.parametrize("cfg,ip,status", [c[1:] for c in IP_CASES], ids=[c[0] for c in IP_CASES])
def test_ip_restriction(cfg, ip, status):
    p = make(IpRestriction, cfg)
    for _ in range(2):  # the second time from the cache
        r = p.access(ctx(client_ip=ip))
        if status is None:
            assert r is None
        else:
            assert isinstance(r, Reply) and r.status == status and r.error
            assert r.body == {"message": cfg.get("message", "Your IP address is not allowed")}


def test_ip_restriction_unknown_client_and_cache_bound():
    p = make(IpRestriction, {"allow": ["10.0.0.0/8"]})
    r = p.access(ctx(client_ip=""))
    assert r.status == 403 and "Cannot identify the client IP" in r.body["message"]
    for i in range(3000):
        p.verdict(f"10.{i // 256 % 256}.{i % 256}.1")
    assert len(p.cache) <= 1024


@pytest.mark.parametrize("cfg,message", [
    ({}, "at least one of these fields must be non-empty"),
    ({"allow": []}, "at least one of these fields must be non-empty"),
    ({"allow": ["10.0.0.300"]}, "invalid ip or cidr range: '10.0.0.300'"),
    ({"deny": ["10.0.0.0/33"]}, "invalid ip or cidr range"),
    ({"deny": ["1.2.3.4"], "status": 99}, "between 100 and 599"),
    ({"deny": ["1.2.3.4"], "whitelist": ["1.2.3.4"]}, "Extra inputs are not permitted"),
], ids=["none", "empty", "bad-ip", "bad-prefix", "bad-status", "unknown-field"])
def test_ip_restriction_config_errors(cfg, message):
    invalid(IpRestriction, cfg, message)


# ---------------------------------------------------------------------------------------------------------------------
# cors
# ---------------------------------------------------------------------------------------------------------------------
def preflight(origin="https://a.example", **extra):
    hs = [("Origin", origin), ("Access-Control-Request-Method", "POST")] + list(extra.items())
    return ctx(method="OPTIONS", headers=[(n.replace("_", "-"), v) for n, v in hs])


def test_cors_preflight_defaults():
    p = make(Cors)
    c = preflight(Access_Control_Request_Headers="X-A,X-B")
    r = p.access(c)
    h = dict(r.headers)
    assert r.status == 200 and r.body == b""
    assert h["Access-Control-Allow-Origin"] == "*"
    assert h["Access-Control-Allow-Methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
    assert h["Access-Control-Allow-Headers"] == "X-A,X-B"
    assert "Vary" not in h and "Access-Control-Max-Age" not in h and "Access-Control-Allow-Credentials" not in h
    resp = response(200)
    p.header_filter(c, resp)  # the preflight's own answer gets nothing more
    assert resp.headers.items() == []


def test_cors_preflight_configured():
    p = make(Cors, {"origins": ["https://a.example", r"https://.*\.b\.example"], "methods": ["GET", "POST"],
                    "headers": ["X-Token"], "credentials": True, "max_age": 3600, "private_network": True})
    r = p.access(preflight("https://x.b.example", Access_Control_Request_Private_Network="true"))
    h = dict(r.headers)
    assert h == {"Vary": "Origin", "Access-Control-Allow-Origin": "https://x.b.example",
                 "Access-Control-Allow-Credentials": "true", "Access-Control-Allow-Headers": "X-Token",
                 "Access-Control-Allow-Methods": "GET,POST", "Access-Control-Max-Age": "3600",
                 "Access-Control-Allow-Private-Network": "true"}
    r = p.access(preflight("https://evil.example"))
    assert "Access-Control-Allow-Origin" not in dict(r.headers) and r.status == 200


@pytest.mark.parametrize("c", [
    ctx(method="GET"), ctx(method="OPTIONS"),
    ctx(method="OPTIONS", headers=[("Access-Control-Request-Method", "GET")]),
], ids=["get", "options-without-acrm", "options-without-origin"])
def test_cors_not_a_preflight(c):
    assert make(Cors).access(c) is None


def test_cors_preflight_continue():
    p = make(Cors, {"preflight_continue": True})
    c = preflight()
    assert p.access(c) is None
    resp = response(204)
    p.header_filter(c, resp)
    assert resp.headers.items() == []


CORS_CASES = [
    # id, config, request Origin, ACAO, Vary: Origin, ACAC
    ("any", {}, "https://a.example", "*", False, None),
    ("star", {"origins": ["*"]}, "https://a.example", "*", False, None),
    ("single-fixed", {"origins": ["https://z.example"]}, "https://a.example", "https://z.example", True, None),
    ("exact-hit", {"origins": ["https://a.example", "https://b.example"]}, "https://a.example",
     "https://a.example", True, None),
    ("exact-default-port", {"origins": ["https://a.example:443", "https://b.example"]}, "https://a.example",
     "https://a.example", True, None),
    ("exact-miss", {"origins": ["https://b.example", "https://c.example"]}, "https://a.example", None, True, None),
    ("regex-host", {"origins": [r".*\.example"]}, "https://a.example", "https://a.example", True, None),
    ("regex-anchored", {"origins": [r"a\.exam"]}, "https://a.example", None, True, None),
    ("regex-with-scheme", {"origins": [r"https://(a|b)\.example"]}, "https://b.example", "https://b.example",
     True, None),
    ("star-among-others", {"origins": ["https://b.example", "*"]}, "https://a.example", "*", True, None),
    ("credentials", {"origins": ["https://a.example", "https://b.example"], "credentials": True},
     "https://a.example", "https://a.example", True, "true"),
    ("credentials-with-star", {"credentials": True}, "https://a.example", "https://a.example", True, "true"),
]


@pytest.mark.parametrize("cfg,origin,acao,vary,acac", [c[1:] for c in CORS_CASES], ids=[c[0] for c in CORS_CASES])
def test_cors_actual_request(cfg, origin, acao, vary, acac):
    p = make(Cors, cfg)
    c = ctx(headers=[("Origin", origin)])
    assert p.access(c) is None
    resp = response(200, [("Access-Control-Allow-Origin", "upstream"), ("Vary", "Accept-Encoding")])
    p.header_filter(c, resp)
    h = resp.headers
    assert h.get("Access-Control-Allow-Origin") == acao
    assert ("Origin" in h.get_all("Vary")) == vary
    assert h.get("Access-Control-Allow-Credentials") == acac
    assert len(h.get_all("Access-Control-Allow-Origin")) <= 1


def test_cors_exposed_headers_and_absent_origin():
    p = make(Cors, {"exposed_headers": ["X-Total", "X-Page"]})
    resp = response(200)
    p.header_filter(ctx(headers=[]), resp)  # allow_origin_absent (default true): headers anyway
    assert resp.headers.get("Access-Control-Expose-Headers") == "X-Total,X-Page"
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    p = make(Cors, {"allow_origin_absent": False})
    resp = response(200)
    p.header_filter(ctx(headers=[]), resp)
    assert resp.headers.items() == []


@pytest.mark.parametrize("cfg,message", [
    ({"origins": ["(unclosed"]}, "'(unclosed' is not a valid regex"),
    ({"methods": ["FETCH"]}, "methods.0"),
    ({"credentials": "maybe"}, "credentials"),
], ids=["bad-regex", "bad-method", "bad-bool"])
def test_cors_config_errors(cfg, message):
    invalid(Cors, cfg, message)


# ---------------------------------------------------------------------------------------------------------------------
# request-size-limiting
# ---------------------------------------------------------------------------------------------------------------------
SIZE_CASES = [
    ("under", {}, [("Content-Length", "1000")], None, None),
    ("at-limit-bytes", {"allowed_payload_size": 10, "size_unit": "bytes"}, [("Content-Length", "10")], None, None),
    ("over-bytes", {"allowed_payload_size": 10, "size_unit": "bytes"}, [("Content-Length", "11")], 413, None),
    ("over-kilobytes", {"allowed_payload_size": 1, "size_unit": "kilobytes"}, [("Content-Length", "1025")], 413,
     None),
    ("over-megabytes", {"allowed_payload_size": 1}, [("Content-Length", str(2**20 + 1))], 413, None),
    ("expect-continue", {"allowed_payload_size": 1, "size_unit": "bytes"},
     [("Content-Length", "5"), ("Expect", " 100-Continue ")], 417, None),
    ("no-body", {"require_content_length": True}, [], None, None),
    ("chunked-streamed", {"allowed_payload_size": 2, "size_unit": "kilobytes"},
     [("Transfer-Encoding", "chunked")], None, 2048),
    ("chunked-required", {"require_content_length": True}, [("Transfer-Encoding", "chunked")], 411, None),
    ("bad-length-required", {"require_content_length": True}, [("Content-Length", "x")], 411, None),
]


@pytest.mark.parametrize("cfg,headers,status,max_body", [c[1:] for c in SIZE_CASES], ids=[c[0] for c in SIZE_CASES])
def test_request_size_limiting(cfg, headers, status, max_body):
    p = make(RequestSizeLimiting, cfg)
    c = ctx(method="POST", headers=headers)
    r = p.access(c)
    if status is None:
        assert r is None
    else:
        assert r.status == status and r.error
        assert r.body["message"] == ("A valid Content-Length header is required" if status == 411
                                     else "Request size limit exceeded")
    assert c.shared.get("max_body") == max_body
    assert p.buffers_request is False


def test_request_size_limiting_keeps_smallest_max_body_and_config():
    c = ctx(method="POST", headers=[("Transfer-Encoding", "chunked")])
    c.shared["max_body"] = 100
    make(RequestSizeLimiting, {"allowed_payload_size": 1, "size_unit": "kilobytes"}).access(c)
    assert c.shared["max_body"] == 100
    assert make(RequestSizeLimiting).limit == 128 * 2**20
    invalid(RequestSizeLimiting, {"size_unit": "gigabytes"}, "size_unit")
    invalid(RequestSizeLimiting, {"allowed_payload_size": -1}, "greater than or equal to 0")


# ---------------------------------------------------------------------------------------------------------------------
# request-termination
# ---------------------------------------------------------------------------------------------------------------------
TERM_CASES = [
    ("default", {}, 503, b'{"message":"Service unavailable"}', "application/json; charset=utf-8"),
    ("message", {"status_code": 403, "message": "closed"}, 403, b'{"message":"closed"}',
     "application/json; charset=utf-8"),
    ("no-default-message", {"status_code": 418}, 418, b"", None),
    ("mock", {"status_code": 200, "body": "<h1>hi</h1>", "content_type": "text/html"}, 200, b"<h1>hi</h1>",
     "text/html"),
    ("body-without-type", {"status_code": 200, "body": "plain"}, 200, b"plain", None),
]


@pytest.mark.parametrize("cfg,status,body,ctype", [c[1:] for c in TERM_CASES], ids=[c[0] for c in TERM_CASES])
def test_request_termination(cfg, status, body, ctype):
    p = make(RequestTermination, cfg)
    r = p.access(ctx())
    assert r.status == status and r.body == body and dict(r.headers).get("Content-Type") == ctype
    assert not implements(p, "request_body")


@pytest.mark.parametrize("query,headers,fires", [
    (b"", [], False),
    (b"?debug", [], True),
    (b"?a=1&debug=0", [], True),
    (b"?debugx=1", [], False),
    (b"", [("X-Debug", "1")], False),
    (b"", [("DEBUG", "")], True),
], ids=["none", "bare-arg", "arg", "other-arg", "other-header", "header-any-case"])
def test_request_termination_trigger(query, headers, fires):
    p = make(RequestTermination, {"trigger": "debug"})
    r = p.access(ctx(query=query, headers=headers))
    assert (r is not None) == fires


def test_request_termination_echo():
    p = make(RequestTermination, {"echo": True, "status_code": 200})
    assert p.buffers_request is True and implements(p, "request_body")
    c = ctx(query=b"?a=1&a=2&f", headers=[("Host", "api.example:8000"), ("X-A", "1"), ("x-a", "2")])
    r = p.access(c)
    doc = json.loads(r.body)
    assert r.status == 200 and dict(r.headers)["Content-Type"].startswith("application/json")
    assert "message" not in doc  # 200 has no default message
    req = doc["request"]
    assert req["host"] == "api.example" and req["port"] == 8000 and req["method"] == "GET" and req["path"] == "/x"
    assert req["headers"]["x-a"] == ["1", "2"] and req["query"] == {"a": ["1", "2"], "f": True}
    assert doc["matched_route"]["name"] == "r" and doc["matched_service"]["name"] == "s"
    assert set(doc["kong"]) == {"node_id", "worker_pid", "hostname"}
    # with a body: answered once the body is read
    c = ctx(method="POST", headers=[("Content-Type", "application/json"), ("Content-Length", "7")])
    assert p.access(c) is None
    doc = json.loads(p.request_body(c, b'{"a":1}').body)
    assert doc["request"]["body"] == {"a": 1} and doc["request"]["raw_body"] == '{"a":1}'
    assert p.request_body(ctx(), b"x") is None  # not marked by access: nothing to do


@pytest.mark.parametrize("cfg,message", [
    ({"message": "m", "body": "b"}, "message cannot be used with content_type or body"),
    ({"content_type": "text/plain"}, "content_type requires a body"),
    ({"echo": True, "body": "b"}, "echo cannot be used with content_type and body"),
    ({"status_code": 600}, "between 100 and 599"),
    ({"trigger": "bad name"}, "bad header name 'bad name'"),
], ids=["message-and-body", "type-without-body", "echo-and-body", "status", "trigger"])
def test_request_termination_config_errors(cfg, message):
    invalid(RequestTermination, cfg, message)


# ---------------------------------------------------------------------------------------------------------------------
# correlation-id
# ---------------------------------------------------------------------------------------------------------------------
def test_correlation_id_uuid_counter_and_client_value():
    p = make(CorrelationId)
    assert not implements(p, "header_filter")  # echo_downstream off: no response phase at all
    a, b = ctx(headers=[]), ctx(headers=[])
    p.access(a)
    p.access(b)
    va, vb = a.headers.get("Kong-Request-ID"), b.headers.get("Kong-Request-ID")
    pa, na = va.split("#")
    pb, nb = vb.split("#")
    assert pa == pb and int(nb) == int(na) + 1 and re.fullmatch(r"[0-9a-f-]{36}", pa)
    assert a.shared["correlation_id"] == va
    c = ctx(headers=[("kong-request-id", "client-1")])
    p.access(c)
    assert c.headers.get_all("Kong-Request-ID") == ["client-1"]
    c = ctx(headers=[("Kong-Request-ID", "")])
    p.access(c)
    assert c.headers.get_all("Kong-Request-ID") != [""]


@pytest.mark.parametrize("generator,pattern", [
    ("uuid", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
    ("uuid#counter", r"[0-9a-f-]{36}#\d+"),
    ("tracker", r".+-\d+-\d+-\d+\.\d{3}"),
], ids=["uuid", "uuid-counter", "tracker"])
def test_correlation_id_generators_and_echo(generator, pattern):
    p = make(CorrelationId, {"generator": generator, "header_name": "X-Corr", "echo_downstream": True})
    c = ctx(headers=[])
    p.access(c)
    value = c.headers.get("X-Corr")
    assert re.fullmatch(pattern, value)
    resp = response(200, [("X-Corr", "upstream")])
    p.header_filter(c, resp)
    assert resp.headers.get_all("X-Corr") == [value]
    resp = response(502)
    p.header_filter(ctx(headers=[]), resp)  # access never ran (an early error): a fresh id
    assert re.fullmatch(pattern, resp.headers.get("X-Corr"))


def test_correlation_id_config_errors():
    invalid(CorrelationId, {"header_name": "X Corr"}, "bad header name")
    invalid(CorrelationId, {"generator": "uuid4"}, "generator")


# ---------------------------------------------------------------------------------------------------------------------
# request-transformer
# ---------------------------------------------------------------------------------------------------------------------
RT_HEADER_CASES = [
    ("remove", {"remove": {"headers": ["X-A"]}}, [("X-A", "1"), ("X-B", "2")], [("X-B", "2")]),
    ("rename", {"rename": {"headers": ["X-A:X-C"]}}, [("X-A", "1"), ("X-C", "old")], [("X-C", "1")]),
    ("rename-absent", {"rename": {"headers": ["X-Z:X-C"]}}, [("X-A", "1")], [("X-A", "1")]),
    ("replace-present", {"replace": {"headers": ["X-A:new"]}}, [("X-A", "1")], [("X-A", "new")]),
    ("replace-absent", {"replace": {"headers": ["X-Z:new"]}}, [("X-A", "1")], [("X-A", "1")]),
    ("add-absent", {"add": {"headers": ["X-Z:v"]}}, [("X-A", "1")], [("X-A", "1"), ("X-Z", "v")]),
    ("add-present", {"add": {"headers": ["x-a:v"]}}, [("X-A", "1")], [("X-A", "1")]),
    ("append", {"append": {"headers": ["X-A:2"]}}, [("X-A", "1")], [("X-A", "1"), ("X-A", "2")]),
    ("value-with-colon", {"add": {"headers": ["X-U:http://u:80/"]}}, [], [("X-U", "http://u:80/")]),
    ("order", {"remove": {"headers": ["X-A"]}, "add": {"headers": ["X-A:added"]}}, [("X-A", "1")],
     [("X-A", "added")]),
    ("host-untouched", {"remove": {"headers": ["Host"]}, "add": {"headers": ["Host:h"]}}, [("Host", "a")],
     [("Host", "a")]),
]


@pytest.mark.parametrize("cfg,before,after", [c[1:] for c in RT_HEADER_CASES], ids=[c[0] for c in RT_HEADER_CASES])
def test_request_transformer_headers(cfg, before, after):
    p = make(RequestTransformer, cfg)
    c = ctx(headers=before)
    if implements(p, "access"):  # Host-only removes/adds leave it nothing to do
        assert p.access(c) is None
    assert [(n.lower(), v) for n, v in c.headers.items()] == [(n.lower(), v) for n, v in after]
    assert not implements(p, "request_body") and not p.buffers_request


RT_QUERY_CASES = [
    ("remove", {"remove": {"querystring": ["a"]}}, b"?a=1&b=2&a=3", b"?b=2"),
    ("remove-all", {"remove": {"querystring": ["a", "b"]}}, b"?a=1&b=2", b""),
    ("rename", {"rename": {"querystring": ["a:z"]}}, b"?a=1&b=2", b"?z=1&b=2"),
    ("rename-overwrites", {"rename": {"querystring": ["a:b"]}}, b"?a=1&b=2", b"?b=1"),
    ("replace", {"replace": {"querystring": ["a:x y"]}}, b"?a=1&b=2&a=3", b"?a=x%20y&b=2"),
    ("replace-absent", {"replace": {"querystring": ["c:x"]}}, b"?a=1", b"?a=1"),
    ("add", {"add": {"querystring": ["c:3", "a:9"]}}, b"?a=1", b"?a=1&c=3"),
    ("add-to-empty", {"add": {"querystring": ["c:é&"]}}, b"", b"?c=%C3%A9%26"),
    ("append", {"append": {"querystring": ["a:2"]}}, b"?a=1", b"?a=1&a=2"),
    ("untouched-kept-raw", {"add": {"querystring": ["c:3"]}}, b"?q=a+b%2Fc&flag", b"?q=a+b%2Fc&flag&c=3"),
    ("encoded-name", {"remove": {"querystring": ["a b"]}}, b"?a+b=1&c=2", b"?c=2"),
]


@pytest.mark.parametrize("cfg,before,after", [c[1:] for c in RT_QUERY_CASES], ids=[c[0] for c in RT_QUERY_CASES])
def test_request_transformer_querystring(cfg, before, after):
    p = make(RequestTransformer, cfg)
    c = ctx(query=before)
    p.access(c)
    assert c.query == after


def test_request_transformer_uri_method_host():
    p = make(RequestTransformer, {"replace": {"uri": "/v2/items", "headers": ["Host:internal.example"]},
                                  "http_method": "POST"})
    c = ctx()
    p.access(c)
    assert c.upstream_path == "/v2/items" and c.shared["method"] == "POST"
    assert c.shared["upstream_host"] == "internal.example"
    assert c.query == b"?a=1&b=2"
    assert not implements(make(RequestTransformer), "access")  # an empty config costs nothing


JSON_CT = [("Content-Type", "application/json; charset=utf-8")]
FORM_CT = [("Content-Type", "application/x-www-form-urlencoded")]
RT_BODY_CASES = [
    ("json-remove", {"remove": {"body": ["a"]}}, JSON_CT, b'{"a":1,"b":2}', {"b": 2}),
    ("json-rename", {"rename": {"body": ["a:z"]}}, JSON_CT, b'{"a":1,"b":2}', {"b": 2, "z": 1}),
    ("json-replace", {"replace": {"body": ["a:x", "c:y"]}}, JSON_CT, b'{"a":1}', {"a": "x"}),
    ("json-add", {"add": {"body": ["a:x", "c:y"]}}, JSON_CT, b'{"a":1}', {"a": 1, "c": "y"}),
    ("json-append", {"append": {"body": ["a:x", "l:y", "n:z"]}}, JSON_CT, b'{"a":"1","l":["0"]}',
     {"a": ["1", "x"], "l": ["0", "y"], "n": ["z"]}),
    ("json-empty-body-add", {"add": {"body": ["a:x"]}, "remove": {"body": ["b"]}}, JSON_CT, b"", {"a": "x"}),
    ("json-invalid", {"add": {"body": ["a:x"]}}, JSON_CT, b"{nope", None),
    ("json-not-object", {"add": {"body": ["a:x"]}}, JSON_CT, b"[1,2]", None),
    ("json-no-change", {"remove": {"body": ["zz"]}}, JSON_CT, b'{"a": 1}', None),
    ("form", {"remove": {"body": ["a"]}, "add": {"body": ["c:3"]}, "rename": {"body": ["b:bb"]}}, FORM_CT,
     b"a=1&b=2", b"bb=2&c=3"),
    ("other-type", {"add": {"body": ["a:x"]}}, [("Content-Type", "text/plain")], b"hello", None),
    ("no-type", {"add": {"body": ["a:x"]}}, [], b"hello", None),
]


@pytest.mark.parametrize("cfg,headers,body,expected", [c[1:] for c in RT_BODY_CASES],
                         ids=[c[0] for c in RT_BODY_CASES])
def test_request_transformer_body(cfg, headers, body, expected):
    p = make(RequestTransformer, cfg)
    assert p.buffers_request is True and type(p).buffers_request is False  # decided per instance
    c = ctx(method="POST", headers=headers)
    assert p.wants_request_body(c) == (expected is not None or body in (b"{nope", b"[1,2]", b'{"a": 1}'))
    out = p.request_body(c, body)
    if expected is None:
        assert out is None
    elif isinstance(expected, bytes):
        assert out == expected
    else:
        assert json.loads(out) == expected


def test_request_transformer_get_moves_form_to_query():
    p = make(RequestTransformer, {"http_method": "GET"})
    assert p.buffers_request is True
    c = ctx(method="POST", query=b"?a=1", headers=FORM_CT)
    p.access(c)
    assert p.request_body(c, b"x=1&y=2") is None
    assert c.query == b"?a=1&x=1&y=2" and c.shared["method"] == "GET"


@pytest.mark.parametrize("cfg,message", [
    ({"add": {"headers": ["X-A"]}}, "key 'X-A' has no value"),
    ({"add": {"body": ["a:$(headers.x)"]}}, "templates are not supported yet"),
    ({"replace": {"uri": "/$(uri_captures.x)"}}, "templates are not supported yet"),
    ({"replace": {"uri": "v2"}}, "must start with '/'"),
    ({"add": {"headers": ["X A:1"]}}, "'X A' is not a valid header"),
    ({"rename": {"headers": ["X-A:X B"]}}, "'X B' is not a valid header"),
    ({"http_method": "get"}, "invalid value: 'get'"),
    ({"http_method": "FETCH"}, "FETCH is not supported"),
    ({"add": {"cookies": ["a:b"]}}, "Extra inputs are not permitted"),
], ids=["no-value", "template", "uri-template", "uri-relative", "header-name", "rename-header", "method-case",
        "method-unknown", "unknown-field"])
def test_request_transformer_config_errors(cfg, message):
    invalid(RequestTransformer, cfg, message)


def test_request_transformer_null_is_default():
    cfg = RequestTransformer.Config.model_validate({"remove": None, "add": {"headers": None}})
    assert cfg.remove.headers == () and cfg.add.headers == ()


# ---------------------------------------------------------------------------------------------------------------------
# response-transformer
# ---------------------------------------------------------------------------------------------------------------------
RESP_HEADER_CASES = [
    ("remove", {"remove": {"headers": ["Server"]}}, [("Server", "x"), ("A", "1")], [("A", "1")]),
    ("rename", {"rename": {"headers": ["A:B"]}}, [("A", "1"), ("A", "2")], [("B", "1"), ("B", "2")]),
    ("replace", {"replace": {"headers": ["A:2", "Z:9"]}}, [("A", "1")], [("A", "2")]),
    ("add", {"add": {"headers": ["A:2", "Z:9"]}}, [("A", "1")], [("A", "1"), ("Z", "9")]),
    ("append", {"append": {"headers": ["A:2"]}}, [("A", "1")], [("A", "1"), ("A", "2")]),
]


@pytest.mark.parametrize("cfg,before,after", [c[1:] for c in RESP_HEADER_CASES],
                         ids=[c[0] for c in RESP_HEADER_CASES])
def test_response_transformer_headers(cfg, before, after):
    p = make(ResponseTransformer, cfg)
    resp = response(200, before)
    p.header_filter(ctx(), resp)
    assert resp.headers.items() == after
    assert not implements(p, "response_body") and p.buffers_response is False


PROFILE = {"id": 7, "user": {"email": "a@b.c", "name": "A", "address": {"city": "X"}}, "items": [
    {"id": 1, "secret": "s"}, {"id": 2, "secret": "t"}], "token": "tk"}
RESP_JSON_CASES = [
    ("remove", {"remove": {"json": ["token", "user.address", "nope.x"]}},
     {"id": 7, "user": {"email": "a@b.c", "name": "A"}, "items": PROFILE["items"]}),
    ("rename", {"rename": {"json": ["token:t", "user.email:contact.mail"]}},
     {"id": 7, "user": {"name": "A", "address": {"city": "X"}}, "items": PROFILE["items"], "t": "tk",
      "contact": {"mail": "a@b.c"}}),
    ("replace", {"replace": {"json": ["id:8", "user.name:B", "missing:1"], "json_types": ["number"]}},
     {**PROFILE, "id": 8, "user": {**PROFILE["user"], "name": "B"}}),
    ("add", {"add": {"json": ["id:9", "flag:true", "meta.v:1.5"], "json_types": ["number", "boolean", "number"]}},
     {**PROFILE, "flag": True, "meta": {"v": 1.5}}),
    ("append", {"append": {"json": ["token:x", "tags:a"]}}, {**PROFILE, "token": ["tk", "x"], "tags": ["a"]}),
    ("keep-email", {"json_keep": ["user.email"]}, {"user": {"email": "a@b.c"}}),
    ("keep-list", {"json_keep": ["id", "items.id"]}, {"id": 7, "items": [{"id": 1}, {"id": 2}]}),
    ("keep-after-ops", {"add": {"json": ["extra:1"]}, "json_keep": ["extra", "token"]},
     {"token": "tk", "extra": "1"}),
    ("keep-whole-parent", {"json_keep": ["user", "user.email"]}, {"user": PROFILE["user"]}),
]


@pytest.mark.parametrize("cfg,expected", [c[1:] for c in RESP_JSON_CASES], ids=[c[0] for c in RESP_JSON_CASES])
def test_response_transformer_json(cfg, expected):
    p = make(ResponseTransformer, cfg)
    assert p.buffers_response is True and implements(p, "response_body")
    resp = response(200, [("Content-Type", "application/json")])
    assert p.wants_body(ctx(), resp)
    out = p.response_body(ctx(), resp, json.dumps(PROFILE).encode())
    assert json.loads(out) == expected


def test_response_transformer_literal_dotted_key_and_passthrough():
    p = make(ResponseTransformer, {"remove": {"json": ["a.b"]}})
    resp = response(200, [("Content-Type", "application/json")])
    assert json.loads(p.response_body(ctx(), resp, b'{"a.b":1,"a":{"b":2}}')) == {"a": {"b": 2}}
    for body in (b"{not json", b"[1,2]", b'"str"', b'{"x":1}'):
        assert p.response_body(ctx(), resp, body) is body  # invalid, not an object, or nothing to change
    keep = make(ResponseTransformer, {"json_keep": ["id"]})
    assert json.loads(keep.response_body(ctx(), resp, b'[{"id":1,"x":2},3]')) == [{"id": 1}]


@pytest.mark.parametrize("headers,wanted", [
    ([("Content-Type", "application/json")], True),
    ([("Content-Type", "application/json; charset=utf-8")], True),
    ([("Content-Type", "application/problem+json")], True),
    ([("Content-Type", "Application/Vnd.API+JSON")], True),
    ([("Content-Type", "text/html, application/json")], True),
    ([("Content-Type", "text/json")], False),
    ([("Content-Type", "application/jsonp")], False),
    ([], False),
    ([("Content-Type", "application/json"), ("Content-Encoding", "gzip")], False),
    ([("Content-Type", "application/json"), ("Content-Encoding", "identity")], True),
], ids=["json", "charset", "problem", "vnd-case", "list", "text-json", "jsonp", "none", "gzip", "identity"])
def test_response_transformer_wants_body(headers, wanted):
    p = make(ResponseTransformer, {"remove": {"json": ["a"]}})
    assert p.wants_body(ctx(), response(200, headers)) is wanted
    if "Content-Encoding" not in dict(headers):
        assert is_json_type(dict(headers).get("Content-Type")) is wanted


@pytest.mark.parametrize("cfg,message", [
    ({"add": {"json": ["a:x"], "json_types": ["number"]}}, "'x' is not a number"),
    ({"add": {"json": ["a:1"], "json_types": ["integer"]}}, "json_types"),
    ({"add": {"json": ["a"]}}, "key 'a' has no value"),
    ({"remove": {"json": ["a..b"]}}, "not a valid JSON path"),
    ({"json_keep": ["user."]}, "not a valid JSON path"),
    ({"rename": {"json": ["user:user.old"]}}, "cannot rename 'user' into itself"),
    ({"rename": {"headers": ["A:B C"]}}, "'B C' is not a valid header"),
    ({"add": {"headers": ["A:x\ny"]}}, "is not a valid header"),
], ids=["not-number", "bad-type", "no-value", "empty-segment", "keep-empty-segment", "rename-into-itself",
        "rename-header", "header-value"])
def test_response_transformer_config_errors(cfg, message):
    invalid(ResponseTransformer, cfg, message)


# ---------------------------------------------------------------------------------------------------------------------
# all of them
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,name,priority", [
    (IpRestriction, "ip-restriction", 990), (Cors, "cors", 2000), (RequestSizeLimiting, "request-size-limiting", 951),
    (RequestTermination, "request-termination", 2), (CorrelationId, "correlation-id", 100001),
    (RequestTransformer, "request-transformer", 801), (ResponseTransformer, "response-transformer", 800),
], ids=lambda v: v if isinstance(v, str) else None)
def test_names_and_priorities(cls, name, priority):
    assert cls.name == name and cls.priority == priority
    cls.Config.model_json_schema()  # the admin API / docs can describe every config


def test_ctx_add_response_header_checks_and_collects_fields():
    from types import SimpleNamespace

    from gwanmun.plugins.base import Ctx, Headers, Response

    ctx = Ctx(None, "GET", "/", b"", None, "1.2.3.4", SimpleNamespace(name="r", id=None),
              SimpleNamespace(name="s", id=None), "rid", 0.0, [(b"Host", b"x")])
    ctx.add_response_header("X-Quota", "5")
    ctx.add_response_lines(b"X-Other: a\r\n")
    for name, value in (("Bad Name", "1"), ("X-Split", "a\r\nInjected: 1"), ("X-Nul", "a\0")):
        with pytest.raises(ValueError):
            ctx.add_response_header(name, value)
    assert ctx.response_lines == b"X-Quota: 5\r\nX-Other: a\r\n"
    resp = Response(200, Headers(None, [b"Content-Type: text/plain\r\n"]))
    resp.headers.append_lines(ctx.response_lines)  # as the proxy does before the header filters
    assert resp.headers.get("x-quota") == "5" and resp.headers.get("Content-Type") == "text/plain"
    assert ctx.headers.get("host") == "x"  # the request's fields, made on first use
