"""Access log: one JSON line per request.

Lines are serialised with orjson and written in batches: a batch goes out when it reaches 64 KiB or 100 ms after
its first line, whichever comes first (nginx's ``access_log ... buffer= flush=``, Envoy's flush interval). A request
therefore costs a buffer append, not a syscall; at most 100 ms of lines are lost if the process is killed hard.
The log is flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from time import perf_counter
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from ..proxy import Exchange

BUFFER = 64 * 1024
FLUSH_INTERVAL = 0.1


_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))
_MILLIS_B = tuple(m.encode() for m in _MILLIS)
_FRACTION = tuple(f".{n:03d}".encode() for n in range(1000))


def _millis(us: int) -> bytes:
    """Microseconds as a JSON number of milliseconds with 3 decimals (1234 -> b"1.234")."""
    if us < 0:
        us = 0
    return b"%d%b" % (us // 1000, _FRACTION[us % 1000])


class _Clock:
    """Wall-clock timestamps in ISO 8601 with milliseconds; the per-second prefix is formatted once a second."""

    __slots__ = ("_sec", "_prefix", "_prefix_b")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""
        self._prefix_b = b""

    def now(self) -> str:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._prefix_b = self._prefix.encode()
        return self._prefix + _MILLIS[int((t - sec) * 1000)]

    def now_bytes(self) -> bytes:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self.now()
        return self._prefix_b + _MILLIS_B[int((t - sec) * 1000)]


class AccessLog:
    def __init__(self, dest: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.dest = dest
        self.enabled = dest != "off"
        self._loop = loop
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._clock = _Clock()
        self._fd = -1
        self._own_fd = False
        if not self.enabled:
            return
        if dest == "stdout":
            self._fd = sys.stdout.fileno()
        elif dest == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._own_fd = True

    def write(self, ex: Exchange) -> None:
        """One JSON line, assembled from bytes.

        Only what a client controls (host, path, and a forwarded address or request id from a trusted proxy) goes
        through orjson; names from the config are JSON-encoded once when compiled, and everything else (our
        timestamps, ids, numbers, and methods, which llhttp accepts only from a fixed list) cannot need escaping.
        This is about half the cost of building a dict for orjson, measured (bench/inproc.py --instructions).
        """
        if not self.enabled:
            return
        now = perf_counter()
        down = ex.down
        route = ex.route
        svc = ex.service
        target = ex.target
        host = ex.host
        if host != down.log_host:  # a keep-alive client repeats its Host: encode it once per connection
            down.log_host = host
            down.log_host_json = orjson.dumps(host)
        client_ip = ex.client_ip
        rid = ex.request_id
        # Typed locals: with every argument known to be bytes or int, mypyc compiles the %-format below into one
        # sized concatenation instead of a generic format call.
        rid_json: bytes = orjson.dumps(rid) if ex.rid_client else b'"%b"' % rid.encode()
        ip_json: bytes = b'"%b"' % client_ip.encode() if client_ip is down.client_ip else orjson.dumps(client_ip)
        path_json: bytes = orjson.dumps(ex.path)
        route_json: bytes = route.log_name if route is not None else b"null"
        service_json: bytes = svc.log_name if svc is not None else b"null"
        upstream_json: bytes = target.log_label if target is not None and ex.t_up else b"null"
        up_ms: bytes = _millis(int((ex.t_up_end - ex.t_up) * 1e6)) if ex.t_up else b"null"
        status: int = ex.status
        bytes_in: int = ex.bytes_in
        bytes_out: int = ex.bytes_out
        line = (
            b'{"time":"%b","request_id":%b,"client_ip":%b,"method":"%b","host":%b,"path":%b,"route":%b,'
            b'"service":%b,"upstream":%b,"status":%d,"bytes_in":%d,"bytes_out":%d,"latency_ms":%b,'
            b'"upstream_latency_ms":%b'
        ) % (
            self._clock.now_bytes(),
            rid_json,
            ip_json,
            ex.method.encode(),
            down.log_host_json,
            path_json,
            route_json,
            service_json,
            upstream_json,
            status,
            bytes_in,
            bytes_out,
            _millis(int((now - ex.t0) * 1e6)),
            up_ms,
        )
        tries: int = ex.tries
        if tries:  # the retry policy's retries (docs/resilience.md)
            line = b'%b,"retries":%d' % (line, tries)
        if ex.error:
            line = b'%b,"error":%b}\n' % (line, orjson.dumps(ex.error))
        else:
            line = b"%b}\n" % line
        self._append_line(line)

    def write_error(self, down, status: int, request_id: str, size: int) -> None:
        """A request the parser rejected before it became an exchange (400, 414, 431)."""
        if not self.enabled:
            return
        record = {
            "time": self._clock.now(),
            "request_id": request_id,
            "client_ip": down.client_ip,
            "method": None,
            "host": None,
            "path": None,
            "route": None,
            "service": None,
            "upstream": None,
            "status": status,
            "bytes_in": 0,
            "bytes_out": size,
            "latency_ms": 0.0,
            "upstream_latency_ms": None,
        }
        self._append(orjson.dumps(record))

    def _append(self, line: bytes) -> None:
        self._append_line(line + b"\n")

    def _append_line(self, line: bytes) -> None:
        buf = self._buf
        buf += line
        if len(buf) >= BUFFER:
            self.flush()
        elif self._timer is None:
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buf = self._buf
        if not buf or self._fd < 0:
            return
        view = memoryview(buf)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except BlockingIOError:
            # stdout is a non-blocking pipe that is full: keep the rest for the next flush rather than block
            rest = bytes(view)
            view.release()
            self._buf = bytearray(rest)
            return
        except OSError:
            pass  # a log sink failure must never take a request down
        view.release()
        buf.clear()

    def close(self) -> None:
        self.flush()
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
