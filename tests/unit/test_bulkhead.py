"""Bulkhead: concurrency limit, FIFO queue, queue timeout (loop.call_at on a real loop), cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gwanmun.resilience.bulkhead import (
    CANCELLED,
    GRANTED,
    QUEUED,
    REJECT_FULL,
    REJECT_TIMEOUT,
    REJECTED,
    Bulkhead,
)


class Rec:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def cb(self, name: str):
        return (lambda: self.events.append((name, "grant")), lambda why: self.events.append((name, why)))


def run(coro):
    return asyncio.run(coro)


def test_grant_queue_fifo_and_full():
    async def main():
        bh = Bulkhead(asyncio.get_running_loop(), 2, max_queue=2, queue_timeout=5.0)
        r = Rec()
        tickets = [bh.acquire(*r.cb(str(i))) for i in range(5)]
        assert r.events == [("0", "grant"), ("1", "grant"), ("4", REJECT_FULL)]
        assert [t.state for t in tickets] == [GRANTED, GRANTED, QUEUED, QUEUED, REJECTED]
        assert bh.active == 2 and bh.queued == 2
        bh.release(tickets[1])
        bh.release(tickets[1])  # a second release is a no-op
        assert r.events[-1] == ("2", "grant") and bh.active == 2 and bh.queued == 1
        bh.release(tickets[0])
        assert r.events[-1] == ("3", "grant")
        assert tickets[2].timer is None and tickets[3].timer is None
        bh.release(tickets[2])
        bh.release(tickets[3])
        assert bh.active == 0

    run(main())


def test_queue_timeout_rejects():
    async def main():
        loop = asyncio.get_running_loop()
        bh = Bulkhead(loop, 1, max_queue=5, queue_timeout=0.05)
        r = Rec()
        first = bh.acquire(*r.cb("a"))
        t0 = loop.time()
        waiter = bh.acquire(*r.cb("b"))
        await asyncio.sleep(0.1)
        assert r.events == [("a", "grant"), ("b", REJECT_TIMEOUT)]
        assert waiter.state == REJECTED and bh.queued == 0
        assert loop.time() - t0 >= 0.05
        bh.release(first)
        assert bh.active == 0 and r.events[-1] == ("b", REJECT_TIMEOUT)

    run(main())


def test_cancel_queued_and_granted():
    async def main():
        bh = Bulkhead(asyncio.get_running_loop(), 1, max_queue=3, queue_timeout=5.0)
        r = Rec()
        a = bh.acquire(*r.cb("a"))
        b = bh.acquire(*r.cb("b"))
        c = bh.acquire(*r.cb("c"))
        bh.cancel(b)
        bh.cancel(b)
        assert b.state == CANCELLED and bh.queued == 1 and b.timer is None
        bh.cancel(a)  # a granted ticket: cancel releases it, and c (not the cancelled b) gets the slot
        assert r.events == [("a", "grant"), ("c", "grant")]
        assert c.state == GRANTED and bh.active == 1
        await asyncio.sleep(0)

    run(main())


def test_no_queue_rejects_at_once():
    async def main():
        bh = Bulkhead(asyncio.get_running_loop(), 1)
        r = Rec()
        bh.acquire(*r.cb("a"))
        bh.acquire(*r.cb("b"))
        assert r.events == [("a", "grant"), ("b", REJECT_FULL)]

    run(main())


def test_reentrant_release_in_grant_callback():
    async def main():
        bh = Bulkhead(asyncio.get_running_loop(), 1, max_queue=100, queue_timeout=5.0)
        order: list[int] = []
        tickets = []

        def make(i):
            def grant():
                order.append(i)
                bh.release(tickets[i])  # finishes synchronously (e.g. an immediate error answer)

            return grant

        first = bh.acquire(lambda: None, lambda why: None)
        tickets.append(first)
        for i in range(1, 51):
            tickets.append(bh.acquire(make(i), lambda why: None))
        bh.release(first)
        assert order == list(range(1, 51))
        assert bh.active == 0 and bh.queued == 0

    run(main())


def test_many_cancellations_keep_the_deque_small():
    async def main():
        bh = Bulkhead(asyncio.get_running_loop(), 1, max_queue=10, queue_timeout=5.0)
        bh.acquire(lambda: None, lambda why: None)
        for _ in range(1000):
            t = bh.acquire(lambda: None, lambda why: None)
            bh.cancel(t)
        assert len(bh._queue) <= 16 + 2 * bh.queued

    run(main())


def test_invalid_settings():
    loop = asyncio.new_event_loop()
    try:
        for args in ((0,), (1, -1), (1, 1, -1.0)):
            with pytest.raises(ValueError):
                Bulkhead(loop, *args)
    finally:
        loop.close()


def test_reconfigure_keeps_running_and_queued():
    async def main():
        from gwanmun.resilience.bulkhead import BulkheadSettings

        bh = Bulkhead(asyncio.get_running_loop(), 1, max_queue=5, queue_timeout=5.0)
        r = Rec()
        a = bh.acquire(*r.cb("a"))
        bh.acquire(*r.cb("b"))
        bh.acquire(*r.cb("c"))
        bh.reconfigure(BulkheadSettings(2, 5, 5.0))  # a larger limit grants the first queued at once
        assert r.events == [("a", "grant"), ("b", "grant")] and bh.active == 2 and bh.queued == 1
        bh.reconfigure(BulkheadSettings(1, 0, 0.0))  # smaller: nobody new until active < 1
        bh.acquire(*r.cb("d"))
        assert r.events[-1] == ("d", REJECT_FULL)
        bh.release(a)
        assert bh.active == 1 and r.events[-1] == ("d", REJECT_FULL)  # still at the limit: c waits
        with pytest.raises(ValueError):
            BulkheadSettings(0)

    run(main())


def test_try_acquire_takes_a_free_slot_only_when_nobody_waits():
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        b = Bulkhead(loop, 1, max_queue=1, queue_timeout=10.0)
        assert b.try_acquire() and b.active == 1
        assert not b.try_acquire()  # full
        granted: list[int] = []
        t = b.acquire(lambda: granted.append(1), lambda why: None)
        assert b.queued == 1 and not granted
        b.release()  # the slot taken without a ticket goes to the queued request
        assert granted == [1] and b.active == 1 and b.queued == 0
        b.release(t)
        assert b.active == 0 and b.try_acquire()
    finally:
        loop.close()
