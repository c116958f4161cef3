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


class _Clock:
    """Wall-clock timestamps in ISO 8601 with milliseconds; the per-second prefix is formatted once a second."""

    __slots__ = ("_sec", "_prefix")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return self._prefix + _MILLIS[int((t - sec) * 1000)]


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
        if not self.enabled:
            return
        now = perf_counter()
        route = ex.route
        svc = ex.service
        target = ex.target
        record = {
            "time": self._clock.now(),
            "request_id": ex.request_id,
            "client_ip": ex.client_ip,
            "method": ex.method,
            "host": ex.host,
            "path": ex.path,
            "route": (route.name or route.id) if route is not None else None,
            "service": svc.label if svc is not None else None,
            "upstream": target.label if target is not None and ex.t_up else None,
            "status": ex.status,
            "bytes_in": ex.bytes_in,
            "bytes_out": ex.bytes_out,
            # int(µs) / 1000 gives 3 decimals at a fraction of round()'s cost
            "latency_ms": int((now - ex.t0) * 1e6) / 1000,
            "upstream_latency_ms": int((ex.t_up_end - ex.t_up) * 1e6) / 1000 if ex.t_up else None,
        }
        if ex.error:
            record["error"] = ex.error
        self._append(orjson.dumps(record))

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
        buf = self._buf
        buf += line
        buf += b"\n"
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
