"""Large bodies stream through the gateway without being held in memory.

The 1 GiB tests start their own gateway, reset its peak-RSS counter (``/proc/PID/clear_refs`` = 5) after a warm-up
request, and require the peak RSS during the transfer to stay within 50 MB of the resident size before it.
"""

from __future__ import annotations

import json
import time
import zlib

import pytest

from tests.fixtures.compare import fetch
from tests.fixtures.gateway import read_status, single_service
from tests.fixtures.rawhttp import RawConnection, crc32_of
from tests.fixtures.upstreams import pattern_bytes, pattern_chunks, pattern_crc32

GiB = 1 << 30
MAX_GROWTH_KB = 50 * 1000  # 50 MB


def _reset_peak(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Memory:
    """RSS before and peak RSS during a transfer of the gateway process."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self):
        self.can_reset = _reset_peak(self.pid)
        st = read_status(self.pid)
        self.before = st["VmRSS"]
        self.hwm_before = st["VmHWM"]
        return self

    def __exit__(self, *exc):
        st = read_status(self.pid)
        self.after = st["VmRSS"]
        self.peak = st["VmHWM"]
        return False

    @property
    def growth_kb(self) -> int:
        return max(self.peak, self.after) - self.before

    def describe(self) -> str:
        return (f"RSS before {self.before} kB, peak {self.peak} kB, after {self.after} kB "
                f"(peak counter reset: {self.can_reset})")


@pytest.fixture
def big_gw(gateway, scripted):
    gw = gateway(single_service(scripted.url, name="scripted", route_name="all",
                                read_timeout=60000, write_timeout=60000))
    # warm-up: let the gateway reach its steady state (pools, buffers, imports) before measuring
    for _ in range(3):
        r = fetch(gw.host, gw.port, "POST", "/sink", [("Content-Type", "application/octet-stream")],
                  pattern_bytes(4 << 20))
        assert r.status == 200
        r = fetch(gw.host, gw.port, "GET", f"/gen?n={4 << 20}")
        assert r.status == 200
    return gw


@pytest.mark.timeout(300)
@pytest.mark.parametrize("te", ["cl", "chunked"])
def test_download_1gib_constant_memory(big_gw, te):
    n = GiB
    expected = pattern_crc32(n)
    crc = 0
    count = 0

    def sink(mv):
        nonlocal crc, count
        crc = zlib.crc32(mv, crc)
        count += len(mv)

    with Memory(big_gw.worker_pid) as mem, RawConnection(big_gw.host, big_gw.port, timeout=60) as c:
        t0 = time.monotonic()
        c.request("GET", f"/gen?n={n}&te={te}&chunk=262144")
        r = c.read_response(sink=sink)
        elapsed = time.monotonic() - t0
    assert r.status == 200
    assert count == n, f"got {count} of {n} bytes"
    assert crc & 0xFFFFFFFF == expected, "body corrupted"
    if te == "cl":
        assert r.header("content-length") == str(n)
    assert mem.growth_kb < MAX_GROWTH_KB, f"gateway memory grew by {mem.growth_kb} kB: {mem.describe()}"
    print(f"1 GiB download ({te}) in {elapsed:.1f}s = {n / elapsed / 1e6:.0f} MB/s; {mem.describe()}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upload_1gib_constant_memory(big_gw, framing):
    n = GiB
    expected = pattern_crc32(n)
    with Memory(big_gw.worker_pid) as mem, RawConnection(big_gw.host, big_gw.port, timeout=60) as c:
        t0 = time.monotonic()
        if framing == "content-length":
            c.send(f"POST /sink HTTP/1.1\r\nHost: {big_gw.address}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {n}\r\n\r\n".encode())
            for part in pattern_chunks(n, 1 << 20):
                c.sock.sendall(part)
        else:
            c.send(f"POST /sink HTTP/1.1\r\nHost: {big_gw.address}\r\nContent-Type: application/octet-stream\r\n"
                   f"Transfer-Encoding: chunked\r\n\r\n".encode())
            for part in pattern_chunks(n, 256 * 1024):
                c.sock.sendall(b"%x\r\n" % len(part))
                c.sock.sendall(part)
                c.sock.sendall(b"\r\n")
            c.sock.sendall(b"0\r\n\r\n")
        r = c.read_response("POST")
        elapsed = time.monotonic() - t0
    assert r.status == 200, r.body[:500]
    doc = json.loads(r.body)
    assert doc["bytes"] == n, f"upstream received {doc['bytes']} of {n} bytes"
    assert doc["crc32"] == expected, "body corrupted on the way"
    assert mem.growth_kb < MAX_GROWTH_KB, f"gateway memory grew by {mem.growth_kb} kB: {mem.describe()}"
    print(f"1 GiB upload ({framing}) in {elapsed:.1f}s = {n / elapsed / 1e6:.0f} MB/s; {mem.describe()}")


def test_8mib_post_echoed_by_httpbin(shared_gateway, httpbin):
    gw = shared_gateway(single_service(httpbin.url, name="httpbin", route_name="all"))
    body = (b"0123456789abcdef" * (1 << 19))  # 8 MiB of text, echoed back in JSON
    hs = [("Content-Type", "text/plain")]
    direct = fetch(httpbin.host, httpbin.port, "POST", "/anything", hs, body, timeout=60)
    via = fetch(gw.host, gw.port, "POST", "/anything", hs, body, timeout=60)
    assert via.status == direct.status == 200
    assert via.json()["data"] == direct.json()["data"] == body.decode()
    assert via.json()["headers"]["Content-Length"] == str(len(body))


def test_64mib_download_and_upload_on_one_connection(shared_gateway, scripted):
    gw = shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))
    n = 64 << 20
    with RawConnection(gw.host, gw.port, timeout=60) as c:
        c.request("GET", f"/gen?n={n}&te=chunked")
        r = c.read_response()
        assert len(r.body) == n and crc32_of(r.body) == pattern_crc32(n)
        c.request("POST", "/sink", [("Content-Type", "application/octet-stream")], r.body)
        r2 = c.read_response("POST")
        assert r2.json()["bytes"] == n and r2.json()["crc32"] == pattern_crc32(n)
