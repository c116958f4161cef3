"""Timeouts per service and per route, and the overall deadline per request (``request_timeout``, issue 4 item 3).

Kong's ``connect_timeout``/``read_timeout``/``write_timeout`` bound each wait between two reads or writes; a route
may override them for its own requests. ``request_timeout`` (service or route, ms) bounds the whole exchange, as
Envoy's route timeout does: a slow trickle that never trips ``read_timeout`` still ends at the deadline.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures.gateway import route, service
from tests.fixtures.rawhttp import PeerClosed, RawConnection


@pytest.fixture
def gw(gateway, httpbin):
    return gateway({
        "services": [
            service("slow", httpbin.url, [
                route("default", ["/svc"], strip_path=True),
                route("fast", ["/fast"], strip_path=True, read_timeout=300),
                route("deadline", ["/deadline"], strip_path=True, request_timeout=600),
                route("no-deadline", ["/nodeadline"], strip_path=True, request_timeout=0),
            ], read_timeout=5000, request_timeout=1500),
        ],
    })


def _timed(gw, path: str):
    t = time.monotonic()
    r = gw.request("GET", path)
    return r, time.monotonic() - t


def test_route_read_timeout_overrides_the_service(gw):
    r, took = _timed(gw, "/fast/delay/2")
    assert r.status == 504 and 0.25 < took < 1.2, took
    line = gw.log_for(r.header("x-request-id"))
    assert line["route"] == "fast" and "0.3s" in line["error"]


def test_service_request_timeout_bounds_the_whole_request(gw):
    r, took = _timed(gw, "/svc/delay/3")  # read_timeout is 5 s; the service's deadline is 1.5 s
    assert r.status == 504 and 1.3 < took < 2.5, took
    assert json.loads(r.body)["message"] == "The request timed out"


def test_route_request_timeout_overrides_the_service(gw):
    r, took = _timed(gw, "/deadline/delay/3")
    assert r.status == 504 and 0.5 < took < 1.4, took


def test_route_can_lift_the_deadline(gw):
    r, took = _timed(gw, "/nodeadline/delay/2")  # request_timeout 0 on the route: only read_timeout (5 s) applies
    assert r.status == 200 and took >= 1.9


def test_deadline_cuts_a_trickling_body(gw):
    """Each byte comes well within read_timeout, but the whole body would take 3 s: the head is out, so the
    deadline can only cut the connection (never a response that looks complete)."""
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        t = time.monotonic()
        c.request("GET", "/deadline/drip?numbytes=10&duration=3&delay=0", [("Host", "a")])
        head = c.read_head()
        assert head.status == 200
        with pytest.raises(PeerClosed):
            c.read_body(head)
        assert time.monotonic() - t < 2


def test_timeouts_are_validated(tmp_path):
    from gwanmun.config import load_file
    from gwanmun.errors import ConfigError

    f = tmp_path / "bad.yml"
    f.write_text('_format_version: "3.0"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n'
                 '      - name: r\n        paths: [/]\n        read_timeout: 0\n        request_timeout: -1\n')
    with pytest.raises(ConfigError) as err:
        load_file(str(f))
    text = str(err.value)
    assert "routes[0].read_timeout" in text and "routes[0].request_timeout" in text and "bad.yml:8" in text
