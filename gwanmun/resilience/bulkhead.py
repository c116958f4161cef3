"""A bulkhead: at most ``max_concurrent`` requests of a service at once, then a bounded FIFO queue with a timeout.

Callback-driven for the proxy (no awaits, no tasks): ``acquire(on_grant, on_reject)`` either calls ``on_grant()`` at
once, or queues the request, or calls ``on_reject(reason)`` at once when the queue is full. A queued request is
granted, in arrival order, when a running one calls ``release``; or rejected with ``"queue_timeout"`` when it has
waited ``queue_timeout`` seconds (a ``loop.call_at`` timer, one per queued request). ``cancel(ticket)`` withdraws a
queued request (the client went away) without calling either callback, or releases a granted one. The proxy answers a
rejection with 503.

Callbacks run synchronously inside ``acquire``/``release``/the timer. A callback may call ``release`` or ``acquire``
again: grants are handed out by one loop, never recursively.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable, Final

QUEUED: Final = 0
GRANTED: Final = 1
REJECTED: Final = 2
CANCELLED: Final = 3
RELEASED: Final = 4

REJECT_FULL: Final = "bulkhead_full"
REJECT_TIMEOUT: Final = "queue_timeout"


@dataclass(frozen=True, slots=True)
class BulkheadSettings:
    """Compiled bulkhead settings (seconds)."""

    max_concurrent: int
    max_queue: int = 0
    queue_timeout: float = 0.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_queue < 0 or self.queue_timeout < 0:
            raise ValueError("max_concurrent >= 1, max_queue >= 0, queue_timeout >= 0")


class Ticket:
    __slots__ = ("on_grant", "on_reject", "timer", "state")

    def __init__(self, on_grant: Callable[[], None], on_reject: Callable[[str], None]) -> None:
        self.on_grant = on_grant
        self.on_reject = on_reject
        self.timer: asyncio.TimerHandle | None = None
        self.state = QUEUED


class Bulkhead:
    __slots__ = ("loop", "max_concurrent", "max_queue", "queue_timeout", "active", "queued", "_queue", "_granting")

    def __init__(self, loop: asyncio.AbstractEventLoop, max_concurrent: int, max_queue: int = 0,
                 queue_timeout: float = 0.0) -> None:
        if max_concurrent < 1 or max_queue < 0 or queue_timeout < 0:
            raise ValueError("max_concurrent >= 1, max_queue >= 0, queue_timeout >= 0")
        self.loop = loop
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.active = 0  # granted and not released
        self.queued = 0  # live entries in _queue (cancelled/expired ones are skipped lazily)
        self._queue: deque[Ticket] = deque()
        self._granting = False

    def reconfigure(self, settings: BulkheadSettings) -> None:
        """New limits on reload, keeping the requests running and queued (they were admitted under the old ones).

        A larger limit grants queued requests at once; a smaller one lets the running ones finish and admits no more
        until ``active`` is under it. Queued requests keep their deadlines; ones beyond a smaller queue stay queued.
        """
        self.max_concurrent = settings.max_concurrent
        self.max_queue = settings.max_queue
        self.queue_timeout = settings.queue_timeout
        self._grant()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits (the usual case), with no ticket; give it back with
        ``release()``. False: use ``acquire``, which queues or refuses."""
        if self.active < self.max_concurrent and not self.queued:
            self.active += 1
            return True
        return False

    def acquire(self, on_grant: Callable[[], None], on_reject: Callable[[str], None]) -> Ticket:
        ticket = Ticket(on_grant, on_reject)
        if self.active < self.max_concurrent and not self.queued:
            self.active += 1
            ticket.state = GRANTED
            on_grant()
            return ticket
        if self.queued >= self.max_queue or self.queue_timeout <= 0:
            ticket.state = REJECTED
            on_reject(REJECT_FULL)
            return ticket
        self.queued += 1
        self._queue.append(ticket)
        ticket.timer = self.loop.call_at(self.loop.time() + self.queue_timeout, self._expire, ticket)
        return ticket

    def release(self, ticket: Ticket | None = None) -> None:
        """A granted request is done. With its ticket, a second release (or a release after cancel) is a no-op."""
        if ticket is not None:
            if ticket.state != GRANTED:
                return
            ticket.state = RELEASED
        if self.active > 0:
            self.active -= 1
        self._grant()

    def cancel(self, ticket: Ticket) -> None:
        """Withdraw a queued request (no callback is called), or release a granted one. Idempotent."""
        if ticket.state == QUEUED:
            ticket.state = CANCELLED
            self.queued -= 1
            if ticket.timer is not None:
                ticket.timer.cancel()
                ticket.timer = None
            self._compact()
        elif ticket.state == GRANTED:
            self.release(ticket)

    def _expire(self, ticket: Ticket) -> None:
        if ticket.state != QUEUED:
            return
        ticket.state = REJECTED
        ticket.timer = None
        self.queued -= 1
        self._compact()
        ticket.on_reject(REJECT_TIMEOUT)

    def _grant(self) -> None:
        if self._granting:
            return  # the outer loop below hands the freed slot on
        self._granting = True
        try:
            queue = self._queue
            while queue and self.active < self.max_concurrent:
                ticket = queue.popleft()
                if ticket.state != QUEUED:
                    continue
                self.queued -= 1
                self.active += 1
                ticket.state = GRANTED
                if ticket.timer is not None:
                    ticket.timer.cancel()
                    ticket.timer = None
                ticket.on_grant()
        finally:
            self._granting = False

    def _compact(self) -> None:
        """Drop dead entries when they outnumber live ones, so cancellations cannot grow the deque without bound."""
        queue = self._queue
        if len(queue) > 2 * self.queued + 16:
            self._queue = deque(t for t in queue if t.state == QUEUED)
