"""Back-pressure: when one side cannot keep up, the gateway stops reading from the other instead of buffering.

Each test starts its own gateway, lets the transfer stall, and checks the gateway's memory stayed flat (peak RSS
within 30 MB of the start) and that the other side really was held back; then lets the transfer finish intact.
"""

from __future__ import annotations

import threading
import zlib

import pytest

from tests.fixtures.gateway import read_status, single_service
from tests.fixtures.rawhttp import RawConnection, build_request, wait_quiet
from tests.fixtures.upstreams import pattern_chunks, pattern_crc32

MiB = 1 << 20
MAX_GROWTH_KB = 30 * 1000


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@pytest.fixture
def gw(gateway, scripted, token):
    g = gateway(single_service(scripted.url, name="scripted", route_name="all", read_timeout=60000,
                               write_timeout=60000))
    with RawConnection(g.host, g.port) as c:  # warm-up
        c.request("GET", f"/gen?n={8 * MiB}&t=warm{token}")
        c.read_response()
    _reset_peak(g.worker_pid)
    g.rss0 = read_status(g.worker_pid)["VmRSS"]
    return g


def _growth(gw) -> int:
    st = read_status(gw.worker_pid)
    return max(st["VmHWM"], st["VmRSS"]) - gw.rss0


def test_slow_client_download_holds_upstream(gw, scripted, token):
    n = 512 * MiB
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.request("GET", f"/gen?n={n}&te=cl&chunk=262144&t={token}")
        head = c.read_head()
        assert head.status == 200
        stalled_at = scripted.wait_stalled(token)
        assert stalled_at < n // 4, f"upstream wrote {stalled_at} bytes to a client that reads nothing"
        growth = _growth(gw)
        assert growth < MAX_GROWTH_KB, f"gateway grew {growth} kB while the client was not reading"
        crc, count = 0, 0

        def sink(mv):
            nonlocal crc, count
            crc = zlib.crc32(mv, crc)
            count += len(mv)

        c.read_body(head, sink=sink)
    assert count == n and crc == pattern_crc32(n)


def test_slow_upstream_upload_holds_client(gw, scripted, token):
    n = 512 * MiB
    sent = [0]
    err: list[BaseException] = []
    c = RawConnection(gw.host, gw.port, timeout=60)

    def send():
        try:
            c.send(f"POST /sink?gate={token}&t={token} HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode())
            for part in pattern_chunks(n, 256 * 1024):
                c.sock.sendall(part)
                sent[0] += len(part)
        except BaseException as e:  # pragma: no cover - reported below
            err.append(e)

    t = threading.Thread(target=send, daemon=True)
    try:
        t.start()
        scripted.wait_request(token)
        held = wait_quiet(lambda: sent[0], what="client bytes sent")
        assert held < n // 4, f"gateway accepted {held} bytes for an upstream that reads nothing"
        growth = _growth(gw)
        assert growth < MAX_GROWTH_KB, f"gateway grew {growth} kB while the upstream was not reading"
        scripted.open_gate(token)
        t.join(120)
        assert not t.is_alive() and not err, err
        r = c.read_response("POST")
        assert r.status == 200
        assert r.json()["bytes"] == n and r.json()["crc32"] == pattern_crc32(n)
    finally:
        c.close()


def test_pipelined_requests_not_read_ahead_without_limit(gw, scripted, token):
    """200 pipelined requests for 1 MiB each, and a client that reads nothing for a while: the gateway must not
    fetch all 200 MiB into memory."""
    count = 200
    data = b"".join(build_request("GET", f"/gen?n={MiB}&t={token}&i={i}", host="x") for i in range(count))
    with RawConnection(gw.host, gw.port, timeout=30) as c:
        c.send(data)
        wait_quiet(lambda: len(scripted.find(token)), what="upstream request count")
        growth = _growth(gw)
        assert growth < MAX_GROWTH_KB, f"gateway grew {growth} kB with unread pipelined responses"
        for i in range(count):
            r = c.read_response()
            assert r.status == 200 and len(r.body) == MiB, i
