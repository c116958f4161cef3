"""Upstream host names are resolved through DNS and cached for the answer's TTL (Kong's resolver semantics)."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.dns_server import RecordsDNS


@pytest.fixture
def dns_server():
    server = RecordsDNS()
    yield server
    server.close()


def _config(dns_server, tmp_path, upstream_port: int, **gateway):
    hosts = tmp_path / "hosts"
    hosts.write_text("")  # nothing from /etc/hosts: every name goes to the test's DNS server
    return {
        "_format_version": "3.0",
        "gateway": {"dns_resolver": [dns_server.address], "dns_hostsfile": str(hosts), **gateway},
        "services": [
            {"name": "named", "url": f"http://api.svc.test:{upstream_port}",
             "routes": [{"name": "all", "paths": ["/"]}]},
        ],
    }


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_name_is_resolved_and_cached_for_its_ttl(gateway, scripted, dns_server, tmp_path, token):
    dns_server.records["api.svc.test"] = ("127.0.0.1", 2)
    gw = gateway(_config(dns_server, tmp_path, scripted.port))
    r = gw.request("GET", f"/echo?t={token}")
    assert r.status == 200
    assert dns_server.count("api.svc.test") == 1
    # Host sent upstream is the service's name, not the address it resolved to (Kong's rule)
    assert scripted.request_for(token).header("host") == f"api.svc.test:{scripted.port}"

    for _ in range(5):  # within the TTL: served from the cache, no new query
        assert gw.request("GET", f"/echo?t={token}").status == 200
    assert dns_server.count("api.svc.test") == 1


def test_expired_answer_is_refreshed_while_the_stale_one_serves(gateway, scripted, dns_server, tmp_path, token):
    dns_server.records["api.svc.test"] = ("127.0.0.1", 1)
    gw = gateway(_config(dns_server, tmp_path, scripted.port))
    assert gw.request("GET", f"/echo?t={token}").status == 200
    assert dns_server.count("api.svc.test") == 1
    time.sleep(1.3)  # past the 1 s TTL
    # the stale address serves this request at once; a refresh goes out in the background
    assert gw.request("GET", f"/echo?t={token}").status == 200
    assert _wait_for(lambda: dns_server.count("api.svc.test") == 2), dns_server.queries


def test_dns_valid_ttl_overrides_the_answer(gateway, scripted, dns_server, tmp_path, token):
    dns_server.records["api.svc.test"] = ("127.0.0.1", 3600)
    gw = gateway(_config(dns_server, tmp_path, scripted.port, dns_valid_ttl=0.5))
    assert gw.request("GET", f"/echo?t={token}").status == 200
    time.sleep(0.8)
    assert gw.request("GET", f"/echo?t={token}").status == 200
    assert _wait_for(lambda: dns_server.count("api.svc.test") >= 2), dns_server.queries


def test_unknown_name_is_503_and_the_negative_answer_is_cached(gateway, scripted, dns_server, tmp_path):
    gw = gateway(_config(dns_server, tmp_path, scripted.port))  # no record for api.svc.test
    r = gw.request("GET", "/x")
    assert r.status == 503 and r.json()["message"] == "name resolution failed"
    assert gw.request("GET", "/x").status == 503
    assert dns_server.count("api.svc.test") == 1  # the NXDOMAIN was cached (dns_not_found_ttl)
