"""correlation-id (Kong priority 100001): give each request an id in a header, for the upstream and the logs.

If the client sent ``header_name`` (non-empty), its value is kept; otherwise one is generated and set on the request
sent upstream. The id is left in ``ctx.shared["correlation_id"]`` (Kong logs it as ``correlation_id``). With
``echo_downstream`` it is also set on the response (``header_filter``; without it the plugin has no
``header_filter`` at all).

Generators, all without a syscall per request:
- ``uuid#counter`` (default): a per-process UUID, ``#``, and a per-process counter (``<uuid>#42``), as Kong;
- ``uuid``: a random version-4 UUID from a per-process PRNG seeded from ``os.urandom`` (reseeded after fork);
- ``tracker``: ``<hostname>-<pid>-<counter>-<unix time, 3 decimals>`` (Kong's has the server address and port and
  the connection serial, which the plugin context does not carry).
"""

from __future__ import annotations

import os
import random
import socket
import time
from itertools import count
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from ._traffic import Record, check_header_name
from .base import BuildEnv, Ctx, Plugin, Response

SHARED_KEY = "correlation_id"

_rng = random.Random()
_state: dict[str, Any] = {}


def _uuid4() -> str:
    n = _rng.getrandbits(128)
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)  # version 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # RFC 4122 variant
    h = "%032x" % n
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _reset() -> None:
    """Per-process state: a fresh seed, process UUID and counter (also in each forked worker)."""
    _rng.seed(os.urandom(32))
    _state["uuid"] = _uuid4()
    _state["counter"] = count(1)
    _state["pid"] = os.getpid()


_reset()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset)
_HOST = socket.gethostname()


def process_uuid() -> str:
    """This process's UUID (Kong's worker uuid / node id)."""
    return _state["uuid"]


def gen_uuid_counter() -> str:
    return f"{_state['uuid']}#{next(_state['counter'])}"


def gen_uuid() -> str:
    return _uuid4()


def gen_tracker() -> str:
    return f"{_HOST}-{_state['pid']}-{next(_state['counter'])}-{time.time():.3f}"


GENERATORS: dict[str, Callable[[], str]] = {
    "uuid#counter": gen_uuid_counter,
    "uuid": gen_uuid,
    "tracker": gen_tracker,
}


class CorrelationId(Plugin):
    name = "correlation-id"
    priority = 100001

    class Config(Record):
        header_name: str = Field("Kong-Request-ID", description="the header holding the id")
        generator: Literal["uuid", "uuid#counter", "tracker"] = "uuid#counter"
        echo_downstream: bool = False

        @field_validator("header_name")
        @classmethod
        def _name(cls, v: str) -> str:
            return check_header_name(v)

    def __init__(self, config: Any, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.header = config.header_name
        self.generate = GENERATORS[config.generator]
        if not config.echo_downstream:
            self.header_filter = None  # type: ignore[assignment]  # no phase: the chain skips it

    def access(self, ctx: Ctx) -> None:
        h = ctx.headers
        value = h.get(self.header)
        if value is None:
            value = self.generate()
            h.add(self.header, value)
        elif not value:
            value = self.generate()
            h.set(self.header, value)
        ctx.shared[SHARED_KEY] = value

    def header_filter(self, ctx: Ctx, resp: Response) -> None:
        value = ctx.shared.get(SHARED_KEY) or ctx.headers.get(self.header) or self.generate()
        resp.headers.set(self.header, value)
