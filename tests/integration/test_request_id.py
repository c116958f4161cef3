"""``X-Request-ID``: generated per request and the same in the response, the upstream request and the access log; a
client's own id is kept only when it comes from a trusted proxy."""

from __future__ import annotations

import re

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection

ID_RE = re.compile(r"^[!-~]{8,200}$")  # visible ASCII, long enough to be unique


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.fixture
def trusted_gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all",
                                         gateway={"trusted_ips": ["127.0.0.1/32"]}))


def _get(gw, target, headers=()):
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", target, list(headers))
        return c.read_response()


def test_generated_id_everywhere(gw, scripted, token):
    r = _get(gw, f"/echo?t={token}")
    assert r.status == 200
    rid = r.header_all("x-request-id")
    assert len(rid) == 1 and ID_RE.match(rid[0]), f"response X-Request-ID: {rid}"
    upstream = scripted.request_for(token).header_all("x-request-id")
    assert upstream == rid, f"upstream got {upstream}, client got {rid}"
    entry = gw.log_for(rid[0])
    assert entry["request_id"] == rid[0]


def test_generated_ids_unique(gw, token):
    ids = set()
    with RawConnection(gw.host, gw.port) as c:
        for i in range(50):
            c.request("GET", f"/echo?t={token}&i={i}")
            ids.add(c.read_response().header("x-request-id"))
    assert len(ids) == 50 and None not in ids


def test_client_id_replaced_when_untrusted(gw, scripted, token):
    r = _get(gw, f"/echo?t={token}", [("X-Request-ID", "client-chosen-id-123")])
    rid = r.header_all("x-request-id")
    assert len(rid) == 1 and rid[0] != "client-chosen-id-123"
    assert scripted.request_for(token).header_all("x-request-id") == rid


def test_client_id_kept_from_trusted_proxy(trusted_gw, scripted, token):
    r = _get(trusted_gw, f"/echo?t={token}", [("X-Request-ID", "client-chosen-id-123")])
    assert r.header_all("x-request-id") == ["client-chosen-id-123"]
    assert scripted.request_for(token).header_all("x-request-id") == ["client-chosen-id-123"]
    assert trusted_gw.log_for("client-chosen-id-123")["status"] == 200


def test_upstream_cannot_override_request_id(gw, token):
    """The id in the response is the gateway's, even if the upstream sets its own."""
    r = _get(gw, f"/respond?t={token}&h=X-Request-ID:from-upstream")
    ids = r.header_all("x-request-id")
    assert len(ids) == 1, f"X-Request-ID sent {len(ids)} times: {ids}"
    assert ids[0] != "from-upstream"
    assert gw.log_for(ids[0])["status"] == 200
