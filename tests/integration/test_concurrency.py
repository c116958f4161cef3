"""Many clients at once: every response goes to the client that asked, and a slow request blocks nobody else."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection


@pytest.fixture
def bin_gw(shared_gateway, httpbin):
    return shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


def test_concurrent_clients_get_their_own_responses(bin_gw):
    def client(i: int) -> list[str]:
        errors = []
        c = http.client.HTTPConnection(bin_gw.host, bin_gw.port, timeout=20)
        try:
            for j in range(8):
                body = f"client {i} request {j}".encode() * (1 + (i * j) % 50)
                c.request("POST", f"/anything?c={i}&r={j}", body=body, headers={"Content-Type": "text/plain"})
                r = c.getresponse()
                doc = json.loads(r.read())
                if r.status != 200 or doc["args"] != {"c": str(i), "r": str(j)} or doc["data"] != body.decode():
                    errors.append(f"client {i} request {j}: {r.status} {doc.get('args')}")
        finally:
            c.close()
        return errors

    with ThreadPoolExecutor(16) as ex:
        errors = [e for errs in ex.map(client, range(16)) for e in errs]
    assert not errors, errors[:5]


def test_concurrent_scripted_keepalive(gw, scripted, token):
    def client(i: int) -> int:
        ok = 0
        with RawConnection(gw.host, gw.port, timeout=20) as c:
            for j in range(20):
                c.request("GET", f"/echo?t={token}&c={i}&r={j}")
                r = c.read_response()
                ok += r.status == 200 and r.json()["target"] == f"/echo?t={token}&c={i}&r={j}"
        return ok

    with ThreadPoolExecutor(12) as ex:
        assert sum(ex.map(client, range(12))) == 240


def test_slow_request_does_not_block_others(gw, scripted, token):
    with RawConnection(gw.host, gw.port, timeout=10) as held:
        held.request("GET", f"/gate?name={token}&n=2000&first=10&t={token}")
        scripted.wait_request(token)
        for i in range(5):
            with RawConnection(gw.host, gw.port, timeout=5) as c:
                c.request("GET", f"/echo?t={token}&i={i}")
                assert c.read_response().status == 200
        scripted.open_gate(token)
        r = held.read_response()
        assert r.status == 200 and len(r.body) == 2000


def test_many_idle_connections(gw, token):
    conns = [RawConnection(gw.host, gw.port, timeout=10) for _ in range(200)]
    try:
        for i, c in enumerate(conns[::20]):
            c.request("GET", f"/echo?t={token}&i={i}")
            assert c.read_response().status == 200
        with RawConnection(gw.host, gw.port) as c:
            c.request("GET", f"/echo?t={token}&last=1")
            assert c.read_response().status == 200
    finally:
        for c in conns:
            c.close()
