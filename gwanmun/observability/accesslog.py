"""Access log: one line per request, JSON by default.

Lines are serialised with orjson and written in batches: a batch goes out when it reaches 64 KiB or 100 ms after
its first line, whichever comes first (nginx's ``access_log ... buffer= flush=``, Envoy's flush interval). A request
therefore costs a buffer append, not a syscall; at most 100 ms of lines are lost if the process is killed hard.
The log is flushed on shutdown.

The line's fields or an nginx-like template are configurable (``gateway.access_log_format``, ``access_log_fields``,
``log_redact``; see ``logformat``); the default JSON line is built here, the fastest way.

**Rotation** (a file destination): at most once a second, when a batch is written, the file's name is checked. If
it now names another file or none (logrotate, ``mv``, or another worker rotated it), the log is reopened by name: no
signal is needed. With ``access_log_rotate: {max_size, keep}``, the worker that finds the file at ``max_size`` or
more renames it to ``<file>.1`` (shifting ``.1`` to ``.2`` ... up to ``.<keep>``, the oldest dropped) under an
``flock`` of the file, so several workers rotate it once; the others follow the name within a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

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


def access_log_settings(gw: Any) -> tuple:
    """What, when it changes on a reload, makes a worker reopen its access log."""
    rotate = getattr(gw, "access_log_rotate", None)
    redact = getattr(gw, "log_redact", None)
    fields = getattr(gw, "access_log_fields", None)
    return (gw.access_log, getattr(gw, "access_log_format", "json"), tuple(fields) if fields is not None else None,
            rotate.model_dump_json() if rotate is not None else None,
            redact.model_dump_json() if redact is not None else None)


class AccessLog:
    def __init__(self, dest: str, loop: asyncio.AbstractEventLoop | None = None, gw: Any = None) -> None:
        self.dest = dest
        self.enabled = dest != "off"
        self._loop = loop
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._clock = _Clock()
        self._fd = -1
        self._own_fd = False
        self._ino = 0
        self._dev = 0
        self._next_check = 0.0
        self.max_size = 0  # bytes; 0: no size rotation
        self.keep = 0
        self.formatter: Any = None  # logformat.Formatter, or None for the built-in JSON line
        if not self.enabled:
            return
        if gw is not None:
            from .logformat import compile_formatter

            self.formatter = compile_formatter(gw)
            rotate = getattr(gw, "access_log_rotate", None)
            if rotate is not None:
                self.max_size = int(rotate.max_size)
                self.keep = int(rotate.keep)
        if dest == "stdout":
            self._fd = sys.stdout.fileno()
        elif dest == "stderr":
            self._fd = sys.stderr.fileno()
        else:
            self._fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._own_fd = True
            st = os.fstat(self._fd)
            self._ino = st.st_ino
            self._dev = st.st_dev

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
        if self.formatter is not None:  # a configured format (logformat.py)
            self._append_line(self.formatter(ex, now))
            return
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
        if self.formatter is not None:
            from .logformat import rejected

            self._append_line(self.formatter(rejected(down, status, request_id, size), perf_counter()))
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
        if self._own_fd:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + 1.0
                self._check_file()

    def _check_file(self) -> None:
        """Follow the file's name if it was rotated away; rotate it if it reached ``max_size``."""
        try:
            st = os.stat(self.dest)
        except OSError:
            self._reopen()
            return
        if st.st_ino != self._ino or st.st_dev != self._dev:
            self._reopen()
        elif self.max_size and st.st_size >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        import fcntl

        dest = self.dest
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # every worker writing this file serialises here
            try:
                st = os.stat(dest)
                if st.st_ino == self._ino and st.st_dev == self._dev and st.st_size >= self.max_size:
                    keep = max(1, self.keep)
                    for i in range(keep - 1, 0, -1):
                        older = f"{dest}.{i}"
                        if os.path.exists(older):
                            os.replace(older, f"{dest}.{i + 1}")
                    os.replace(dest, dest + ".1")
                    logging.getLogger("gwanmun").info("access_log_rotated", extra={"fields": {
                        "event": "access_log_rotated", "file": dest, "bytes": st.st_size, "keep": keep}})
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError as exc:
            logging.getLogger("gwanmun").warning("access_log_rotate_failed", extra={"fields": {
                "event": "access_log_rotate_failed", "file": dest, "error": exc.strerror or str(exc)}})
            return
        self._reopen()

    def _reopen(self) -> None:
        try:
            fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            st = os.fstat(fd)
        except OSError:
            return  # keep writing to the file we have
        old = self._fd
        self._fd = fd
        self._ino = st.st_ino
        self._dev = st.st_dev
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
