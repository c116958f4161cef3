"""The control channel between the supervisor and one worker: a socketpair carrying length-prefixed messages.

A message is a tuple whose first item names it:

- supervisor -> worker: ``("config", generation, LoadedConfig)``, a validated config to compile and swap in.
- worker -> supervisor: ``("ready", pid)`` once it serves; ``("applied", generation, config_hash)`` or
  ``("failed", generation, reason)`` after each config.

Messages are pickled: both ends are the same program (a worker is forked from the supervisor) and the channel never
carries anything read from the network or a file other than the config the supervisor has already validated.
Sending the validated ``LoadedConfig`` rather than asking each worker to re-read the file means every worker runs
exactly the config the supervisor checked, even if the file changes again meanwhile, and unpickling it costs a
worker about a tenth of parsing and validating the YAML again.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

HEADER = struct.Struct("!I")
MAX_MESSAGE = 1 << 30


def encode(message: tuple) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"control message too large ({len(payload)} bytes)")
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Any:
    return pickle.loads(payload)


class Decoder:
    """Splits the bytes received so far into message payloads (still pickled)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if n > MAX_MESSAGE:
                raise ValueError(f"control message too large ({n} bytes)")
            end = HEADER.size + n
            if len(self.buf) < end:
                break
            out.append(bytes(self.buf[HEADER.size : end]))
            del self.buf[:end]
        return out


class Outbox:
    """What the supervisor still has to write to one worker, written without ever blocking the supervisor.

    Only configs go this way and only the newest matters, so a config that has not started going out is replaced
    by a newer one: a worker that is slow to read is sent the latest config, not a backlog.
    """

    def __init__(self) -> None:
        self.sending = memoryview(b"")
        self.queued: bytes | None = None

    def put(self, frame: bytes) -> None:
        self.queued = frame

    @property
    def pending(self) -> bool:
        return bool(self.sending) or self.queued is not None

    def flush(self, sock: socket.socket) -> None:
        """Write what the socket takes now. Raises ``OSError`` if the worker end is gone."""
        while True:
            if not self.sending:
                if self.queued is None:
                    return
                self.sending, self.queued = memoryview(self.queued), None
            try:
                n = sock.send(self.sending)
            except BlockingIOError:
                return
            self.sending = self.sending[n:]
