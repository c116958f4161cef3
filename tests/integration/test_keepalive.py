"""Persistent connections: on the client side, and the gateway's pool of upstream connections.

Tests that count upstream connections start their own gateway so its pool holds only their connections.
"""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import PeerClosed, RawConnection


@pytest.fixture
def own_gw(gateway, scripted):
    return gateway(single_service(scripted.url, name="scripted", route_name="all"))


def test_client_connection_reused(shared_gateway, httpbin):
    gw = shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))
    with RawConnection(gw.host, gw.port) as c:
        for i in range(10):
            body = b"x" * i
            c.request("POST", f"/anything?i={i}", [("Content-Type", "text/plain")], body)
            r = c.read_response("POST")
            assert r.status == 200
            assert r.json()["args"] == {"i": str(i)} and r.json()["data"] == body.decode()
            assert "close" not in r.connection_tokens()
        assert not c.peer_closed(0.3), "gateway closed an idle keep-alive connection immediately"


def test_upstream_connection_pooled(own_gw, scripted, token):
    """Sequential requests, even from different client connections, reuse one pooled upstream connection."""
    for i in range(3):
        with RawConnection(own_gw.host, own_gw.port) as c:
            for j in range(3):
                c.request("GET", f"/echo?t={token}&i={i}&j={j}")
                assert c.read_response().status == 200
    recs = scripted.wait_request(token, 9)
    conns = {r.conn_id for r in recs}
    assert len(conns) == 1, f"9 sequential requests used {len(conns)} upstream connections"


def test_client_connection_close_honoured(shared_gateway, scripted, token):
    gw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/echo?t={token}", [("Connection", "close")])
        r = c.read_response()
        assert r.status == 200
        assert "close" in r.connection_tokens()
        assert c.peer_closed(5), "gateway kept the connection open after Connection: close"


def test_upstream_connection_close_is_hop_by_hop(own_gw, scripted, token):
    """The upstream closing its connection does not close the client's: the next request gets a new upstream
    connection."""
    with RawConnection(own_gw.host, own_gw.port) as c:
        c.request("GET", f"/respond?t={token}&body=one&h=Connection:close")
        r1 = c.read_response()
        assert r1.status == 200 and r1.body == b"one"
        assert "close" not in r1.connection_tokens()
        c.request("GET", f"/respond?t={token}&body=two")
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"two"
    recs = scripted.wait_request(token, 2)
    assert recs[0].conn_id != recs[1].conn_id


def test_stale_pooled_connection_closed_by_upstream(own_gw, scripted, token):
    """The upstream closes (FIN) right after a keep-alive response; the next GET must still succeed."""
    for i in range(4):
        r = own_gw.request("GET", f"/close-after?t={token}&i={i}")
        assert r.status == 200, r.body
    recs = scripted.wait_request(token, 4)
    assert len({r.conn_id for r in recs}) == 4


def test_stale_pooled_connection_dropped_on_reuse_get_retried(own_gw, scripted, token):
    """The upstream drops a pooled connection just as the gateway reuses it (no response at all). A GET is
    idempotent: the gateway retries it on a new connection and the client never notices."""
    r = own_gw.request("GET", f"/drop-next?t={token}")
    assert r.status == 200
    r = own_gw.request("GET", f"/echo?t={token}&second=1")
    assert r.status == 200, f"stale connection not replaced transparently: {r.status} {r.body[:200]!r}"
    recs = scripted.wait_request(token, 3)
    dropped = [x for x in recs if x.dropped]
    served = [x for x in recs if not x.dropped and x.query.get("second")]
    assert dropped, "the gateway did not reuse the pooled connection (no pooling?)"
    assert dropped[0].conn_id == recs[0].conn_id
    assert len(served) == 1 and served[0].conn_id != recs[0].conn_id


def test_stale_pooled_connection_head_and_delete_retried(own_gw, scripted, token):
    for method in ("HEAD", "DELETE", "PUT"):
        r = own_gw.request("GET", f"/drop-next?t={token}")
        assert r.status == 200
        body = b"idempotent" if method == "PUT" else None
        r = own_gw.request(method, f"/echo?t={token}&m={method}", body=body)
        assert r.status == 200, f"{method} on a stale pooled connection: {r.status} {r.body[:200]!r}"


def test_stale_pooled_connection_post_not_replayed(own_gw, scripted, token):
    """A POST is not idempotent: if the pooled connection dies after the request was sent, the gateway must not
    send it again by itself (RFC 9110 §9.2.2); the client gets a 502 and the upstream saw the POST once."""
    r = own_gw.request("GET", f"/drop-next?t={token}")
    assert r.status == 200
    r = own_gw.request("POST", f"/echo?t={token}&post=1", body=b"pay once")
    posts = [x for x in scripted.find(token) if x.method == "POST"]
    assert len(posts) >= 1
    if posts[0].dropped:
        assert len(posts) == 1, f"POST replayed after the connection dropped: {[(p.conn_id, p.dropped) for p in posts]}"
        assert r.status == 502, f"expected 502, got {r.status}"
    else:  # the gateway noticed the dead connection before sending: then the POST went out once, on a new one
        assert len(posts) == 1 and r.status == 200


def test_idle_client_connection_survives_upstream_close(own_gw, scripted, token):
    with RawConnection(own_gw.host, own_gw.port) as c:
        for i in range(3):
            c.request("GET", f"/close-after?t={token}&i={i}")
            r = c.read_response()
            assert r.status == 200
            assert "close" not in r.connection_tokens()
        try:
            assert not c.peer_closed(0.2)
        except PeerClosed:
            pytest.fail("client connection closed")
