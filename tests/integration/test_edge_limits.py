"""Edge limits against slow and greedy clients: client_header_timeout (408, then close: slowloris),
client_body_timeout (408), the per-worker connection cap (503), and that a slowloris crowd does not starve
normal clients."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import RawConnection


def _gw(gateway, httpbin, **settings):
    return gateway(single_service(httpbin.url, gateway=settings))


def test_slow_head_gets_408_then_close(gateway, httpbin):
    gw = _gw(gateway, httpbin, client_header_timeout=1)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        t = time.monotonic()
        c.send(b"GET /get HTTP/1.1\r\nHost: a\r\n")  # the head never ends
        for _ in range(3):
            time.sleep(0.2)
            c.send(b"X-Drip: 1\r\n")  # trickling bytes does not reset the head's deadline
        r = c.read_response()
        elapsed = time.monotonic() - t
        assert r.status == 408 and json.loads(r.body)["message"] == "request header timeout"
        assert r.header("connection") == "close"
        assert c.peer_closed()
    assert 0.9 < elapsed < 4
    line = gw.wait_log(lambda x: x["status"] == 408)
    assert line["request_id"] == r.header("x-request-id")


def test_partial_request_line_gets_408(gateway, httpbin):
    gw = _gw(gateway, httpbin, client_header_timeout=1)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.send(b"GE")
        assert c.read_response().status == 408
        assert c.peer_closed()


def test_head_timeout_counts_per_request_on_keepalive(gateway, httpbin):
    """A keep-alive connection that served requests for longer than the timeout is not cut: each head has its
    own deadline."""
    gw = _gw(gateway, httpbin, client_header_timeout=1)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        for _ in range(4):
            c.request("GET", "/get", [("Host", "a")])
            assert c.read_response().status == 200
            time.sleep(0.4)


def test_slow_body_gets_408(gateway, httpbin):
    gw = _gw(gateway, httpbin, client_body_timeout=1)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.send(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        t = time.monotonic()
        r = c.read_response()
        assert r.status == 408 and json.loads(r.body)["message"] == "request body timeout"
        assert 0.9 < time.monotonic() - t < 4
        assert c.peer_closed()


def test_steady_slow_body_is_not_cut(gateway, httpbin):
    """client_body_timeout is between two reads (nginx's rule), not for the whole body."""
    gw = _gw(gateway, httpbin, client_body_timeout=1)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.send(b"POST /post HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            time.sleep(0.3)
            c.send(b"y")
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body)["data"] == "yyyyyyyy"


def test_connection_cap_answers_503(gateway, httpbin):
    gw = _gw(gateway, httpbin, max_connections=3)
    held = [socket.create_connection((gw.host, gw.port)) for _ in range(3)]
    try:
        time.sleep(0.3)  # accepted
        with RawConnection(gw.host, gw.port, timeout=10) as c:
            r = c.read_response()
            assert r.status == 503 and json.loads(r.body)["message"] == "too many connections"
            assert c.peer_closed()
        held.pop().close()
        time.sleep(0.3)
        r = gw.request("GET", "/get")
        assert r.status == 200
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("timeout", [0])
def test_timeouts_can_be_disabled(gateway, httpbin, timeout):
    gw = _gw(gateway, httpbin, client_header_timeout=timeout, client_body_timeout=timeout, keepalive_timeout=5)
    with RawConnection(gw.host, gw.port, timeout=10) as c:
        c.send(b"GET /get HTTP/1.1\r\n")
        time.sleep(1.2)
        c.send(b"Host: a\r\n\r\n")
        assert c.read_response().status == 200


def test_slowloris_crowd_does_not_starve_normal_clients(gateway, httpbin):
    """300 connections dribbling a never-ending head (a small slowloris; bench/slowloris.py runs 1,000): normal
    requests are still served, quickly."""
    gw = _gw(gateway, httpbin, client_header_timeout=30)
    attackers = []
    for _ in range(300):
        s = socket.create_connection((gw.host, gw.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        attackers.append(s)
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for s in attackers:
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            stop.wait(0.5)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        ok = 0
        with RawConnection(gw.host, gw.port, timeout=10) as c:
            for _ in range(50):
                c.request("GET", "/get", [("Host", "a")])
                ok += c.read_response().status == 200
        assert ok == 50
        assert time.monotonic() - started < 10
    finally:
        stop.set()
        t.join(2)
        for s in attackers:
            s.close()
