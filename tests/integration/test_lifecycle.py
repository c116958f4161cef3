"""Process lifecycle: the "listening" line per listener, several listeners, SIGTERM, a bad config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.gateway import REPO_ROOT, Gateway, GatewayStartError, route, service, single_service
from tests.fixtures.rawhttp import RawConnection


def test_listening_line(gateway, scripted):
    gw = gateway(single_service(scripted.url))
    ev = [e for e in gw.stderr_events() if e.get("event") == "listening"]
    assert len(ev) == 1
    assert ev[0]["level"] == "info"
    host, port = ev[0]["address"].rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536


def test_two_listeners(gateway, scripted, token):
    gw = gateway({"gateway": {"listen": ["127.0.0.1:0", "127.0.0.1:0"]},
                  "services": [service("s", scripted.url, [route("r", ["/"], strip_path=False)])]})
    assert len(gw.addresses) == 2 and gw.addresses[0] != gw.addresses[1]
    for addr in gw.addresses:
        host, port = addr.rsplit(":", 1)
        with RawConnection(host, int(port)) as c:
            c.request("GET", f"/echo?t={token}")
            assert c.read_response().status == 200


def test_sigterm_exits(gateway, scripted):
    gw = gateway(single_service(scripted.url))
    gw.proc.send_signal(signal.SIGTERM)
    try:
        rc = gw.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("gateway still running 10 s after SIGTERM")
    assert rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM), f"exit code {rc}"


def test_sigterm_with_idle_keepalive_connection(gateway, scripted, token):
    """An idle keep-alive client must not keep the gateway from exiting."""
    gw = gateway(single_service(scripted.url))
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/echo?t={token}")
        assert c.read_response().status == 200
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("an idle keep-alive connection kept the gateway alive after SIGTERM")


def test_invalid_config_fails_fast(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text('_format_version: "3.0"\nservices:\n  - name: x\n    url: "not a url"\n    routes: 7\n')
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "gwanmun", "run", "--config", str(cfg)], cwd=REPO_ROOT, env=env,
                       capture_output=True, timeout=30)
    assert p.returncode != 0
    assert b"listening" not in p.stderr
    assert p.stderr.strip(), "no error message"
    assert time.monotonic() - t0 < 15


def test_fixture_reports_startup_failure(tmp_path):
    """The gateway fixture itself: a gateway that cannot start is reported with its stderr, not a hang."""
    gw = Gateway({"services": [{"name": "x", "url": "nope://", "routes": 3}]}, tmp_path)
    with pytest.raises(GatewayStartError) as ei:
        gw.start()
    assert "stderr" in str(ei.value)
    assert not gw.alive()


def test_sigterm_with_request_in_flight(gateway, scripted, token):
    """Graceful stop: an in-flight request may delay the exit, but only for a bounded grace period."""
    gw = gateway(single_service(scripted.url, read_timeout=120000))
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.request("GET", f"/hang?t={token}&max=60")
        scripted.wait_request(token)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("gateway still running 15 s after SIGTERM with one stuck request")
        assert time.monotonic() - t0 < 15
        # the client is not left hanging: it gets an answer or a closed connection
        try:
            r = c.read_response()
            assert r.status >= 500
        except (ConnectionError, OSError):
            pass


def test_new_connections_refused_after_sigterm(gateway, scripted, token):
    gw = gateway(single_service(scripted.url, read_timeout=120000))
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.request("GET", f"/hang?t={token}&max=2")  # the upstream gives up after 2 s, ending the request
        scripted.wait_request(token)
        gw.proc.send_signal(signal.SIGTERM)
        # wait for the "stopping" event, then a new connection must not be served
        from tests.fixtures.rawhttp import wait_for

        wait_for(lambda: any(e.get("event") == "stopping" for e in gw.stderr_events()), 5, what="stopping event")
        try:
            with RawConnection(gw.host, gw.port, timeout=3) as c2:
                c2.request("GET", f"/echo?t={token}&late=1")
                r = c2.read_response()
                assert r.status >= 500 or "close" in r.connection_tokens(), "served normally after SIGTERM"
        except (ConnectionError, OSError):
            pass
    # once the in-flight request ends (the upstream closes after 2 s), the gateway finishes stopping
    try:
        gw.proc.wait(8)
    except subprocess.TimeoutExpired:
        pytest.fail("gateway still running 8 s after SIGTERM although its only request had ended")
