"""1xx interim responses (103 Early Hints) from the upstream reach HTTP/1.1 clients before the final response."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


@pytest.mark.parametrize("n", [1, 3])
def test_early_hints_relayed(gw, token, n):
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/hints?n={n}&t={token}")
        r = c.read_response()
    assert r.status == 200
    hints = [i for i in r.interim if i.status == 103]
    assert len(hints) == n, f"got interim responses {[i.raw_head for i in r.interim]}"
    assert [h.header("link") for h in hints] == [f"</hint{i}.css>; rel=preload" for i in range(n)]
    assert r.json()["target"] == f"/hints?n={n}&t={token}"


def test_early_hints_then_keepalive(gw, token):
    with RawConnection(gw.host, gw.port) as c:
        for i in range(3):
            c.request("GET", f"/hints?n=1&t={token}&i={i}")
            r = c.read_response()
            assert r.status == 200 and len(r.interim) == 1
            assert r.json()["target"].endswith(f"i={i}")


def test_early_hints_on_post(gw, token):
    with RawConnection(gw.host, gw.port) as c:
        c.request("POST", f"/hints?n=1&t={token}", [("Content-Type", "text/plain")], b"data" * 1000)
        r = c.read_response("POST")
    assert [i.status for i in r.interim] == [103]
    assert r.status == 200 and r.json()["body_len"] == 4000
