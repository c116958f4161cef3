"""Fault injection (issue 4, item 8): a route's ``fault`` delays or aborts a share of its requests, or only those
carrying a header (whose numeric value then sets the delay in ms or the status), as Envoy's fault filter does."""

from __future__ import annotations

import json
import time

import pytest

from tests.fixtures.gateway import route, service


@pytest.fixture
def gw(gateway, httpbin):
    return gateway({
        "services": [
            service("bin", httpbin.url, [
                route("abort", ["/abort"], fault={"abort": {"status": 503}}),
                route("half", ["/half"], fault={"abort": {"status": 500, "percentage": 50}}),
                route("abort-on-header", ["/abort-h"], fault={"abort": {"status": 502, "header": "X-Fault-Abort"}}),
                route("delay", ["/delay-all"], fault={"delay": {"duration": 300}}),
                route("delay-on-header", ["/delay-h"], fault={"delay": {"duration": 100, "header": "X-Fault-Delay"}}),
                route("plain", ["/plain"]),
            ]),
        ],
    })


def test_abort_answers_at_once_and_never_reaches_the_upstream(gw):
    r = gw.request("GET", "/abort/get")
    assert r.status == 503 and json.loads(r.body)["message"] == "fault injected"
    line = gw.log_for(r.header("x-request-id"))
    assert line["upstream"] is None and line["route"] == "abort" and line["error"] == "fault injected"


def test_abort_percentage_is_honoured(gw):
    statuses = [gw.request("GET", "/half/get").status for _ in range(400)]
    aborted = statuses.count(500) / len(statuses)
    assert set(statuses) <= {200, 500} and 0.38 < aborted < 0.62, aborted


def test_abort_only_with_the_header_and_its_value_as_status(gw):
    assert gw.request("GET", "/abort-h/get").status == 200
    assert gw.request("GET", "/abort-h/get", headers={"X-Fault-Abort": "yes"}).status == 502
    assert gw.request("GET", "/abort-h/get", headers={"X-Fault-Abort": "418"}).status == 418


def test_delay_then_proxied(gw):
    t = time.monotonic()
    r = gw.request("POST", "/delay-all/post", body=b"payload sent during the delay",
                   headers={"Content-Type": "text/plain"})
    took = time.monotonic() - t
    assert r.status == 200 and json.loads(r.body)["data"] == "payload sent during the delay"
    assert 0.28 < took < 1.5, took


def test_delay_only_with_the_header_and_its_value_as_ms(gw):
    t = time.monotonic()
    assert gw.request("GET", "/delay-h/get").status == 200
    plain = time.monotonic() - t
    t = time.monotonic()
    assert gw.request("GET", "/delay-h/get", headers={"X-Fault-Delay": "400"}).status == 200
    delayed = time.monotonic() - t
    assert plain < 0.3 and 0.38 < delayed < 1.5, (plain, delayed)


def test_routes_without_faults_are_untouched(gw):
    t = time.monotonic()
    assert gw.request("GET", "/plain/get").status == 200
    assert time.monotonic() - t < 0.5


def test_fault_config_is_validated(tmp_path):
    from gwanmun.config import load_file
    from gwanmun.errors import ConfigError

    f = tmp_path / "bad.yml"
    f.write_text('_format_version: "3.0"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n'
                 '      - name: r\n        paths: [/]\n        fault:\n          abort: {status: 99, percentage: 101}\n'
                 '          delay: {duration: -5, colour: red}\n')
    with pytest.raises(ConfigError) as err:
        load_file(str(f))
    text = str(err.value)
    for path in ("fault.abort.status", "fault.abort.percentage", "fault.delay.duration", "fault.delay.colour"):
        assert path in text, (path, text)
