"""The process model: N workers behind one supervisor, crash restarts, graceful and forced shutdown."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection, wait_for


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _get(gw, path: str, timeout: float = 10.0) -> http.client.HTTPResponse:
    """One request on a new connection; the response is read."""
    c = http.client.HTTPConnection(gw.host, gw.port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r
    finally:
        c.close()


def test_workers_are_children_of_the_supervisor_and_all_serve(gateway, scripted, token):
    gw = gateway(single_service(scripted.url), workers=2)
    started = gw.stderr_events("started")[0]
    assert started["workers"] == 2 and started["pid"] == gw.pid
    pids = gw.worker_pids()
    assert len(pids) == 2 and sorted(pids) == sorted(started["worker_pids"])
    assert all(_ppid(p) == gw.pid for p in pids)
    assert sorted(e["worker"] for e in gw.stderr_events("worker_started")) == [0, 1]
    # Each worker makes request ids with its own random prefix: the kernel spreads new connections over both.
    prefixes = set()
    for i in range(60):
        r = _get(gw, f"/echo?t={token}&i={i}")
        assert r.status == 200
        prefixes.add(r.getheader("X-Request-ID").rsplit("-", 1)[0])
    assert len(prefixes) == 2, f"request id prefixes seen: {prefixes}"


def test_worker_count_from_config_and_command_line(gateway, scripted):
    gw = gateway(single_service(scripted.url, gateway={"workers": 3}), workers=None)
    assert gw.stderr_events("started")[0]["workers"] == 3 and len(gw.worker_pids()) == 3
    gw2 = gateway(single_service(scripted.url, gateway={"workers": 3}), workers=2)  # --workers wins
    assert gw2.stderr_events("started")[0]["workers"] == 2 and len(gw2.worker_pids()) == 2


def test_killed_worker_is_restarted_and_requests_keep_succeeding(gateway, scripted, token):
    gw = gateway(single_service(scripted.url), workers=2)
    victim, survivor = gw.worker_pids()
    mark = gw.mark()
    os.kill(victim, signal.SIGKILL)
    # Straight away: connections the kernel hands to the dead worker's socket wait in its queue (the supervisor
    # keeps the socket open) and are served by the replacement.
    t0 = time.monotonic()
    statuses = [_get(gw, f"/echo?t={token}&i={i}").status for i in range(40)]
    assert statuses == [200] * 40
    assert time.monotonic() - t0 < 10
    exited = gw.wait_event("worker_exited", after=mark, pred=lambda e: e["pid"] == victim)
    assert exited["level"] == "error"
    assert exited["signal"] == "SIGKILL" and exited["reason"] == "killed by SIGKILL"
    assert exited["restart_in_s"] == 0.0
    new = gw.wait_event("worker_started", after=mark)
    assert new["pid"] not in (victim, survivor) and new["worker"] == exited["worker"]
    assert sorted(gw.worker_pids()) == sorted([survivor, new["pid"]])
    assert _ppid(new["pid"]) == gw.pid


def test_worker_exit_code_is_logged(gateway, scripted):
    """A worker stopped from outside (here SIGTERM straight to it: a clean exit) is restarted too, and the log says
    how it ended."""
    gw = gateway(single_service(scripted.url), workers=1)
    victim = gw.worker_pid
    mark = gw.mark()
    os.kill(victim, signal.SIGTERM)
    exited = gw.wait_event("worker_exited", after=mark)
    assert exited["pid"] == victim and exited["exit_code"] == 0 and exited["reason"] == "exited with code 0"
    new = gw.wait_event("worker_started", after=mark)
    assert new["pid"] != victim
    assert _get(gw, "/echo").status == 200


def _post_gated(gw, gate: str, token: str) -> RawConnection:
    """A request the upstream holds (it reads nothing until ``open_gate(gate)``), on its own connection."""
    c = RawConnection(gw.host, gw.port, timeout=30)
    c.send(f"POST /sink?gate={gate}&t={token} HTTP/1.1\r\nHost: gw\r\nContent-Length: 16\r\n\r\n".encode()
           + b"x" * 16)
    return c


def _assert_refused(gw) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((gw.host, gw.port), timeout=5).close()


def test_graceful_shutdown_finishes_the_request_in_flight(gateway, scripted, token):
    gw = gateway(single_service(scripted.url, read_timeout=60000))
    with _post_gated(gw, f"g-{token}", token) as c:
        scripted.wait_request(token)
        mark = gw.mark()
        gw.proc.send_signal(signal.SIGTERM)
        stopping = gw.wait_event("stopping", after=mark)
        assert stopping["connections"] == 1
        _assert_refused(gw)  # stopped accepting
        time.sleep(0.3)
        assert gw.alive(), "the gateway did not wait for its request in flight"
        scripted.open_gate(f"g-{token}")
        r = c.read_response()
        assert r.status == 200 and r.json()["bytes"] == 16
    assert gw.proc.wait(10) == 0
    assert gw.stderr_events("stopped")[-1]["exit_code"] == 0
    assert not gw.pid_file.exists(), "the pid file was left behind"


def test_shutdown_timeout_bounds_the_wait(gateway, scripted, token):
    gw = gateway(single_service(scripted.url, read_timeout=60000, gateway={"shutdown_timeout": 1}))
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.request("GET", f"/hang?t={token}&max=60")
        scripted.wait_request(token)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(10) == 0
        assert 0.9 < time.monotonic() - t0 < 5
        assert gw.stderr_events("shutting_down")[0]["grace_s"] == 1
        with pytest.raises((ConnectionError, OSError, AssertionError)):
            c.read_response()  # closed without an answer


def test_second_sigint_forces_the_stop(gateway, scripted, token):
    gw = gateway(single_service(scripted.url, read_timeout=60000, gateway={"shutdown_timeout": 60}), workers=2)
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.request("GET", f"/hang?t={token}&max=60")
        scripted.wait_request(token)
        mark = gw.mark()
        gw.proc.send_signal(signal.SIGINT)
        gw.wait_event("shutting_down", after=mark)
        wait_for(lambda: len(gw.stderr_events("stopping", after=mark)) == 2, 5, what="both workers stopping")
        time.sleep(0.3)
        assert gw.alive(), "the first SIGINT did not wait for the request in flight"
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGINT)
        try:
            rc = gw.proc.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("a second SIGINT did not stop the gateway")
        assert rc == 1 and time.monotonic() - t0 < 3
    assert gw.stderr_events("forced_shutdown")
    assert not [e for e in gw.stderr_events("worker_killed")], "workers had to be SIGKILLed"


def test_sigterm_to_the_whole_process_group_is_still_graceful(gateway, scripted, token):
    """systemd's default KillMode=control-group sends SIGTERM to every process at once: each worker then gets two
    SIGTERMs (systemd's and the supervisor's), which must not force it."""
    gw = gateway(single_service(scripted.url, read_timeout=60000), workers=2)
    workers = gw.worker_pids()
    with _post_gated(gw, f"g-{token}", token) as c:
        scripted.wait_request(token)
        mark = gw.mark()
        os.killpg(gw.pid, signal.SIGTERM)  # the fixture starts the gateway in its own session: pgid == pid
        wait_for(lambda: len(gw.stderr_events("stopping", after=mark)) == 2, 5, what="both workers stopping")
        # Two SIGTERMs close together may merge into one delivery: one more, now, certainly arrives on its own.
        for pid in workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # the idle worker has already exited
        time.sleep(0.5)
        assert gw.alive() and not gw.stderr_events("forced_stop", after=mark), (workers, gw.pid, [
            {k: e.get(k) for k in ("event", "pid", "worker", "signal", "message")} for e in gw.stderr_events(after=mark)])
        scripted.open_gate(f"g-{token}")
        r = c.read_response()
        assert r.status == 200 and r.json()["bytes"] == 16
    assert gw.proc.wait(10) == 0
