"""Traffic mirroring (issue 4, item 8): a route's ``mirror`` shadows a share of its requests to another service;
the client only ever sees the primary's answer, and a slow or dead mirror costs it nothing."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.gateway import route, service
from tests.fixtures.switchable import Switchable


@pytest.fixture
def pair():
    primary, shadow = Switchable("primary"), Switchable("shadow")
    yield primary, shadow
    primary.close()
    shadow.close()


def _cfg(primary: Switchable, shadow: Switchable, **mirror) -> dict:
    return {"services": [
        service("main", primary.url, [route("r", ["/api"], strip_path=False,
                                            mirror={"service": "shadow", **mirror})]),
        service("shadow", shadow.url + "/copy", []),
    ]}


def _wait_hits(up: Switchable, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while up.hits < n:
        assert time.monotonic() < deadline, f"{up.name} saw {up.hits} requests, expected {n}"
        time.sleep(0.01)


def test_mirror_gets_a_copy_and_the_client_the_primary_answer(gateway, pair):
    primary, shadow = pair
    gw = gateway(_cfg(primary, shadow))
    r = gw.request("POST", "/api/memos?x=1", body=b'{"text": "hello"}', headers={"Content-Type": "application/json"})
    assert r.status == 200 and r.json()["server"] == "primary"
    _wait_hits(shadow, 1)
    seen = shadow.seen[0]
    assert seen.method == "POST" and seen.target == "/copy/api/memos?x=1" and seen.body == b'{"text": "hello"}'
    assert seen.headers["x-request-id"] == r.header("x-request-id")
    assert seen.headers["host"] == shadow.target


def test_chunked_bodies_are_mirrored(gateway, pair, raw):
    primary, shadow = pair
    gw = gateway(_cfg(primary, shadow))
    c = raw(gw.host, gw.port)
    c.send(b"PUT /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert c.read_response().status == 200
    _wait_hits(shadow, 1)
    assert shadow.seen[0].body == b"abcde" and primary.seen[0].body == b"abcde"


def test_a_hanging_mirror_costs_the_client_nothing(gateway, pair):
    primary, shadow = pair
    shadow.set("hang")
    gw = gateway(_cfg(primary, shadow))
    t = time.monotonic()
    for _ in range(50):
        assert gw.request("GET", "/api/x").status == 200
    assert time.monotonic() - t < 5.0
    assert primary.hits == 50
    _wait_hits(shadow, 50)


def test_a_failing_mirror_is_ignored(gateway, pair, refusing_port):
    primary, _ = pair
    gw = gateway({"services": [
        service("main", primary.url, [route("r", ["/api"], mirror={"service": "gone"})]),
        service("gone", f"http://127.0.0.1:{refusing_port.port}", []),
    ]})
    assert all(gw.request("GET", "/api/x").status == 200 for _ in range(10))


def test_percentage_of_requests_mirrored(gateway, pair):
    primary, shadow = pair
    gw = gateway(_cfg(primary, shadow, percentage=30))
    for _ in range(300):
        gw.request("GET", "/api/x")
    time.sleep(0.3)
    assert 60 <= shadow.hits <= 120, shadow.hits


def test_bodies_over_the_limit_are_not_mirrored(gateway, pair):
    primary, shadow = pair
    gw = gateway(_cfg(primary, shadow, body_limit=100))
    assert gw.request("POST", "/api/x", body=b"a" * 500).status == 200
    assert gw.request("POST", "/api/x", body=b"b" * 50).status == 200
    _wait_hits(shadow, 1)
    time.sleep(0.2)
    assert [s.body for s in shadow.seen] == [b"b" * 50]


def test_mirrored_requests_in_flight_are_capped(gateway, pair):
    from gwanmun.upstream.mirror import MAX_IN_FLIGHT

    primary, shadow = pair
    shadow.set("hang")
    gw = gateway(_cfg(primary, shadow))
    for _ in range(MAX_IN_FLIGHT + 40):
        assert gw.request("GET", "/api/x").status == 200
    _wait_hits(shadow, MAX_IN_FLIGHT)
    time.sleep(0.3)
    assert shadow.hits == MAX_IN_FLIGHT  # the rest were skipped, not queued
