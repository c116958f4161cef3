"""Kong upstreams: a service whose host names an upstream is balanced over its targets."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.fixtures.gateway import route, service
from tests.fixtures.rawhttp import RawConnection
from tests.fixtures.upstreams import NxdomainDNS, RefusingPort, ScriptedUpstream


@pytest.fixture(scope="module")
def pair():
    a, b = ScriptedUpstream().start(), ScriptedUpstream().start()
    yield a, b
    a.stop()
    b.stop()


def _cfg(targets, upstream_kw=None, service_kw=None):
    return {
        "services": [service("balanced", "http://pool", [route("r", ["/"], strip_path=False)], **(service_kw or {}))],
        "upstreams": [{"name": "pool", "targets": targets, **(upstream_kw or {})}],
    }


def _hit(gw, token, n):
    with RawConnection(gw.host, gw.port) as c:
        out = []
        for i in range(n):
            c.request("GET", f"/echo?t={token}&i={i}")
            out.append(c.read_response())
        return out


def _counts(pair, token):
    a, b = pair
    return len(a.find(token)), len(b.find(token))


def test_equal_weights_alternate(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport, "weight": 100}, {"target": b.hostport, "weight": 100}]))
    rs = _hit(gw, token, 20)
    assert all(r.status == 200 for r in rs)
    assert _counts(pair, token) == (10, 10)


def test_weights_respected(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport, "weight": 300}, {"target": b.hostport, "weight": 100}]))
    rs = _hit(gw, token, 40)
    assert all(r.status == 200 for r in rs)
    assert _counts(pair, token) == (30, 10)


def test_weight_zero_disabled(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport, "weight": 0}, {"target": b.hostport, "weight": 100}]))
    rs = _hit(gw, token, 6)
    assert all(r.status == 200 for r in rs)
    assert _counts(pair, token) == (0, 6)


def test_all_weights_zero_503(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport, "weight": 0}, {"target": b.hostport, "weight": 0}]))
    r = _hit(gw, token, 1)[0]
    assert r.status == 503
    doc = json.loads(r.body)
    assert doc["message"] and doc["request_id"] == r.header("x-request-id")
    assert _counts(pair, token) == (0, 0)


def test_refusing_target_retried_on_next(gateway, pair, token):
    a, _ = pair
    down = RefusingPort()
    try:
        gw = gateway(_cfg([{"target": f"127.0.0.1:{down.port}", "weight": 100}, {"target": a.hostport, "weight": 100}]))
        rs = _hit(gw, token, 6)
        assert [r.status for r in rs] == [200] * 6
        assert len(a.find(token)) == 6
    finally:
        down.close()


def test_host_is_target_address_by_default(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport}, {"target": b.hostport}]))
    _hit(gw, token, 2)
    hosts = Counter(r.header("host") for s in pair for r in s.find(token))
    assert hosts == Counter({a.hostport: 1, b.hostport: 1})


def test_host_header_setting(gateway, pair, token):
    a, _ = pair
    gw = gateway(_cfg([{"target": a.hostport}], upstream_kw={"host_header": "backend.internal"}))
    _hit(gw, token, 1)
    # as in Kong, the target's port is appended unless it is the scheme's default
    assert a.find(token)[0].header_all("host") in (["backend.internal"], [f"backend.internal:{a.port}"])


def test_top_level_targets(gateway, pair, token):
    a, b = pair
    cfg = _cfg([])
    cfg["upstreams"][0].pop("targets")
    cfg["targets"] = [{"target": a.hostport, "upstream": "pool"}, {"target": b.hostport, "upstream": "pool"}]
    gw = gateway(cfg)
    rs = _hit(gw, token, 4)
    assert all(r.status == 200 for r in rs)
    assert _counts(pair, token) == (2, 2)


def test_each_target_keeps_its_own_pool(gateway, pair, token):
    a, b = pair
    gw = gateway(_cfg([{"target": a.hostport}, {"target": b.hostport}]))
    _hit(gw, token, 10)
    assert len({r.conn_id for r in a.find(token)}) == 1
    assert len({r.conn_id for r in b.find(token)}) == 1


def test_unresolvable_service_host_503(gateway, token):
    dns = NxdomainDNS()
    try:
        gw = gateway({
            "gateway": {"dns_resolver": [dns.address], "dns_hostsfile": "/dev/null"},
            "services": [service("ghost", "http://no-such-host.invalid:8080", [route("r", ["/"])], retries=0)],
        })
        with RawConnection(gw.host, gw.port, timeout=15) as c:
            c.request("GET", f"/x?t={token}")
            r = c.read_response()
        assert r.status == 503
        assert json.loads(r.body)["request_id"] == r.header("x-request-id")
        assert dns.queries, "the gateway never asked the configured resolver"
    finally:
        dns.close()
