"""Protocol tier: a config swap (``Worker.apply``) under requests in flight, with in-memory transports.

A request keeps the runtime it started with (``Exchange.rt``) to its end, including a pipelined request that was
queued before the swap; the next request on the same connection uses the new one. ``Worker.in_use`` sees both
kinds, which is what lets a worker release an old runtime only once no request uses it.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from gwanmun.config import load_text
from gwanmun.config.compile import compile_runtime
from tests.protocol.test_framing import OK_12, Rig, head_of

NEW_CONFIG = """
_format_version: "3.0"
gateway: {access_log: "off", via_header: false, request_id_header: X-Trace-Id}
services:
  - name: origin
    url: http://127.0.0.1:9
    routes: [{name: all, paths: ["/"]}]
"""


@pytest.fixture
def rig():
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def make():
        return Rig()

    r = loop.run_until_complete(make())
    yield r
    loop.close()
    asyncio.set_event_loop(None)


def test_request_in_flight_keeps_its_runtime_and_the_next_one_gets_the_new(rig):
    old = rig.worker.holder.current
    rig.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert rig.upstream.take()  # forwarded: now waiting for the upstream's answer
    ex = rig.down.current
    new = compile_runtime(load_text(NEW_CONFIG))
    assert rig.worker.apply(new) is old and rig.worker.holder.current is new
    assert ex.rt is old
    assert rig.worker.in_use(old) and not rig.worker.in_use(new)

    rig.answer(OK_12)
    _, fields, _ = head_of(rig.client.take())
    assert fields[b"via"] == b"1.1 gwanmun" and b"x-request-id" in fields  # the old settings, to the end
    assert not rig.worker.in_use(old)

    rig.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection, after the swap
    _, up, _ = head_of(rig.upstream.take())
    assert b"via" not in up and b"x-trace-id" in up
    assert rig.worker.in_use(new)


def test_pipelined_request_queued_before_the_swap_keeps_the_runtime_it_was_read_with(rig):
    r0 = rig.worker.holder.current
    rig.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight on r0
    rig.upstream.take()
    r1 = compile_runtime(load_text(NEW_CONFIG))
    rig.worker.apply(r1)
    rig.send(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")  # read under r1, queued behind /1
    assert len(rig.down.queue) == 1
    rig.worker.apply(compile_runtime(load_text(NEW_CONFIG)))
    assert rig.worker.in_use(r1), "a queued request's runtime is in use"
    assert rig.worker.in_use(r0)

    rig.answer(OK_12)  # /1 ends on r0 (Via); /2 starts now, on r1 (no Via), though r2 is current
    _, down1, _ = head_of(rig.client.take())
    assert down1[b"via"] == b"1.1 gwanmun"
    assert not rig.worker.in_use(r0) and rig.worker.in_use(r1)
    line, up, _ = head_of(rig.upstream.take())
    assert line == b"GET /2 HTTP/1.1" and b"via" not in up and b"x-trace-id" in up
    rig.answer(OK_12)
    assert not rig.worker.in_use(r1)
