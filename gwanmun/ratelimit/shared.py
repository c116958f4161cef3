"""The ``local`` store: counters in memory shared by every worker process of a node, so a limit is exact per node
whatever the number of workers (per-worker counters would let N workers admit N times the limit).

**Memory.** The supervisor calls ``create()`` before it forks the workers: one anonymous ``MAP_SHARED`` mapping
(zero pages cost nothing until touched) and a few cross-process locks (POSIX semaphores, ``multiprocessing.Lock``).
Every worker inherits both, so they all read and write the same counters. A process that no supervisor prepared (a
test, the in-process bench, an embedding) gets a private table on first use (``table()``), with thread locks.

**Rate-limit counters.** A fixed-size open-addressing hash table of 64-byte slots ``[tag, expires, w, a, b, -, -, -]``
(``algorithms`` says what ``w, a, b`` hold). A counter's tag is a 60-bit hash of (limit id, key) mixed with the
period's salt; the table is split into ``stripes`` (by the low bits of the key hash), each with its own lock, so all
the periods of one key live in one stripe and one lock covers a whole check: read every period, decide, write every
period, release. A key probes up to ``PROBES`` slots from its home position and takes, in order of preference, its
own slot, a stale one (``expires`` passed: its state no longer matters), or an empty one (slots are never emptied
again, so an empty slot ends the search). When all of them hold live counters the one closest to expiry is evicted
(counted in ``stats["evictions"]``): memory is bounded, and a full table degrades towards looser limits, never
stricter ones.

**In-flight counters** (``limit-conn``): slots ``[tag, total]`` and, per worker position, how much of each total that
worker holds. A worker that dies with requests in flight would leave its share counted forever; instead, each worker
claims a position when it is forked, and a new worker first takes back the positions of dead ones: their shares are
subtracted from the totals. So a crash leaks nothing past the restart of the worker.

**A worker killed while holding a lock** (SIGKILL within a check of a few microseconds) would block its stripe; each
lock records its holder's pid, and a process that waited ``LOCK_WAIT`` seconds for a lock whose holder is dead
releases it. A check that still cannot get its lock lets the request through (``stats["lock_timeouts"]``): never a
hang.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
import struct
import threading
from typing import Any, Callable, Final

from . import stats
from math import floor

from .algorithms import FIXED, SLIDING, code_of, fixed, gcra, sliding
from .periods import Period

log = logging.getLogger("gwanmun")

WORDS: Final = 8  # 64-bit words per rate-limit slot
CWORDS: Final = 2  # per in-flight slot
PROBES: Final = 8
LOCK_WAIT: Final = 0.5  # seconds
DEFAULT_SLOTS = int(os.environ.get("GWANMUN_RATELIMIT_SLOTS", 1 << 17))  # 8 MiB of address space (64 B each)
DEFAULT_CONN_SLOTS = int(os.environ.get("GWANMUN_LIMIT_CONN_SLOTS", 1 << 14))
DEFAULT_STRIPES = 16
FRESH: Final = -1.0  # ``w`` of a fresh counter
HASH_MASK: Final = (1 << 60) - 1  # key hashes and tags fit a machine word (compiled: no big-integer arithmetic)

PID = os.getpid()
_shared: Table | None = None  # made by create() before the workers are forked
_private: Table | None = None


def _pow2(n: int, at_least: int) -> int:
    n = max(n, at_least)
    return 1 << (n - 1).bit_length()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Table:
    """Rate-limit and in-flight counters in one mapping (see the module's doc)."""

    def __init__(self, slots: int = DEFAULT_SLOTS, conn_slots: int = DEFAULT_CONN_SLOTS, positions: int = 8,
                 stripes: int = DEFAULT_STRIPES, shared: bool = True) -> None:
        stripes = _pow2(stripes, 1)
        slots = _pow2(slots, stripes * PROBES)
        conn_slots = _pow2(conn_slots, stripes * PROBES)
        self.shared = shared
        self.stripes = stripes
        self.smask = stripes - 1
        self.slots = slots
        self.conn_slots = conn_slots
        self.positions = positions
        self.per = slots // stripes  # rate slots per stripe
        self.cper = conn_slots // stripes
        self.mask = self.per - 1
        self.holders = 0  # word offsets of the regions
        self.pids = stripes
        self.rate = stripes + positions
        self.conn = self.rate + WORDS * slots
        self.counts = self.conn + CWORDS * conn_slots
        words = self.counts + positions * conn_slots
        self.bases = [self.rate + stripe * self.per * WORDS for stripe in range(stripes)]
        self.buf = mmap.mmap(-1, words * 8)  # anonymous and MAP_SHARED: forked children see the same pages
        self.q = memoryview(self.buf).cast("q")
        self.d = memoryview(self.buf).cast("d")
        ctx = multiprocessing.get_context("fork")
        self.locks: list[Any] = [ctx.Lock() if shared else threading.Lock() for _ in range(stripes)]
        self.meta: Any = ctx.Lock() if shared else threading.Lock()  # position claims, lock recovery
        # the locks' bound methods, made once: a call through a bound method costs less than a method look-up
        self.read_slot: Callable[[Any, int], tuple[int, float, float, float, float]] = \
            struct.Struct("=qdddd").unpack_from  # [tag, expires, w, a, b] of the slot at a byte offset
        self.tries: list[Callable[[bool], bool]] = [lock.acquire for lock in self.locks]
        self.releases: list[Callable[[], None]] = [lock.release for lock in self.locks]
        self.position = -1  # this process's position (in-flight shares)
        self.pid = PID  # this process's (lock holders); set again in a forked child
        self.claimed = False

    # -- locks ------------------------------------------------------------------------------------------------------
    def _stuck(self, stripe: int, have_meta: bool = False) -> bool:
        """A lock was not released within LOCK_WAIT: if its holder is dead, release it and try once more. True: the
        caller now holds the lock."""
        holder = self.q[self.holders + stripe]
        lock = self.locks[stripe]
        if self.shared and holder and holder != PID and not _alive(holder):
            if have_meta or self.meta.acquire(True, LOCK_WAIT):
                try:
                    if self.q[self.holders + stripe] == holder:
                        if lock.acquire(False):  # someone else recovered it meanwhile, and it is free: ours
                            return True
                        self.q[self.holders + stripe] = 0
                        lock.release()
                        stats["lock_recovered"] += 1
                        log.warning("rate-limit lock of a dead worker released", extra={"fields": {
                            "event": "ratelimit_lock_recovered", "stripe": stripe, "dead_pid": holder}})
                finally:
                    if not have_meta:
                        self.meta.release()
            if lock.acquire(True, LOCK_WAIT):
                return True
        stats["lock_timeouts"] += 1
        return False

    # -- rate limits ------------------------------------------------------------------------------------------------
    def hit(self, h: int, step: Callable, periods: tuple, now: float) -> tuple[bool, float, list] | None:
        """Count one request of key hash ``h`` against every period (``periods.Period``), with ``step`` (an
        ``algorithms`` function). Returns ``(admitted, retry_after, [(remaining, reset), ...])``, or None when the
        table could not be locked (the caller lets the request through). One period with one of the three
        algorithms is ``hit1``'s work.

        Compiled (setup.py): hashes are cut to 60 bits so that every operation stays on machine integers."""
        if len(periods) == 1:
            code = code_of(step)
            if code >= 0:
                status, retry1, rem, reset = self.hit1(h, code, periods[0], now)
                return None if status < 0 else (status > 0, retry1, [(rem, reset)])
        h &= HASH_MASK
        stripe = h & self.smask
        lock = self.locks[stripe]
        if not lock.acquire(False) and not lock.acquire(True, LOCK_WAIT) and not self._stuck(stripe):
            return None
        try:
            q = self.q
            d = self.d
            q[stripe] = self.pid
            base: int = self.bases[stripe]
            mask = self.mask
            out = []
            writes = []
            ok = True
            retry = 0.0
            for p in periods:
                tag = (h ^ p.salt) or 1
                o = base + ((tag >> 20) & mask) * WORDS
                if q[o] != tag:
                    o = self._probe(base, mask, (tag >> 20) & mask, tag, now)
                idx, start, size = p.window(now)
                r = step(d[o + 2], d[o + 3], d[o + 4], now, idx, start, size, p.limit)
                if r[0]:
                    writes.append((o, r))
                else:
                    ok = False
                    if r[7] > retry:
                        retry = r[7]
                out.append(r)
            if ok:
                for o, r in writes:
                    d[o + 1] = r[4]
                    d[o + 2] = r[1]
                    d[o + 3] = r[2]
                    d[o + 4] = r[3]
                return True, 0.0, [(r[5], r[6]) for r in out]
            # refused: nothing is counted; the periods that would have admitted it keep this request's unit
            return False, retry, [(r[5] + 1.0 if r[0] else r[5], r[6]) for r in out]
        finally:
            lock.release()

    def hit1(self, h: int, alg: int, p: Period, now: float) -> tuple[int, float, float, float]:
        """``hit`` for one period with an algorithm by number (``algorithms.CODES``), returning only machine values:
        ``(1 admitted | 0 refused | -1 not locked, retry_after, remaining, reset)``. Compiled, a call from compiled
        code allocates nothing for its arguments or its result: this is the local policy's per-request path."""
        h &= HASH_MASK
        stripe = h & self.smask
        if not self.tries[stripe](False):
            lock = self.locks[stripe]
            if not lock.acquire(True, LOCK_WAIT) and not self._stuck(stripe):
                return -1, 0.0, 0.0, 0.0
        try:
            q = self.q
            d = self.d
            q[stripe] = self.pid
            base: int = self.bases[stripe]
            mask = self.mask
            tag = (h ^ p.salt) or 1
            o = base + ((tag >> 20) & mask) * WORDS
            # the slot's tag and state in one call (a bound Struct.unpack_from), not four indexings
            t0, _, w0, a0, b0 = self.read_slot(self.buf, o * 8)
            if t0 != tag:
                o = self._probe(base, mask, (tag >> 20) & mask, tag, now)
                t0, _, w0, a0, b0 = self.read_slot(self.buf, o * 8)
            size = p.size
            if size:
                idx = float(floor(now / size))  # now > 0: as now // size, without fmod
                start = idx * size
            else:
                idx, start, size = p.window(now)
            if alg == SLIDING:
                ok, w, a, b, exp, rem, reset, retry = sliding(w0, a0, b0, now, idx, start, size, p.limit)
            elif alg == FIXED:
                ok, w, a, b, exp, rem, reset, retry = fixed(w0, a0, b0, now, idx, start, size, p.limit)
            else:
                ok, w, a, b, exp, rem, reset, retry = gcra(w0, a0, b0, now, idx, start, size, p.limit)
            if ok:
                # only what changed: within a window only ``a`` does (sliding, fixed), and ``exp`` follows ``w``
                if w != w0:
                    d[o + 1] = exp
                    d[o + 2] = w
                if a != a0:
                    d[o + 3] = a
                if b != b0:
                    d[o + 4] = b
                return 1, retry, rem, reset
            return 0, retry, rem, reset
        finally:
            self.releases[stripe]()

    def _probe(self, base: int, mask: int, i: int, tag: int, now: float) -> int:
        """The slot for ``tag`` from home position ``i``: its own, else a stale or empty one (made fresh), else the
        one closest to expiry (evicted). Under the stripe's lock."""
        q = self.q
        d = self.d
        free = -1
        oldest = -1
        oldest_exp = float("inf")
        for j in range(PROBES):
            o = base + ((i + j) & mask) * WORDS
            t = q[o]
            if t == tag:
                return o
            if t == 0:  # never used: the tag is not further on
                if free < 0:
                    free = o
                break
            if free < 0:
                exp = d[o + 1]
                if exp <= now:
                    free = o
                elif exp < oldest_exp:
                    oldest, oldest_exp = o, exp
        if free < 0:
            free = oldest
            stats["evictions"] += 1
        q[free] = tag
        d[free + 1] = now + 1.0  # reserved for this check (another period of the key must not take it)
        d[free + 2] = FRESH
        d[free + 3] = 0.0
        d[free + 4] = 0.0
        return free

    def peek(self, h: int, salt: int) -> tuple[float, float, float, float] | None:
        """(expires, w, a, b) of a counter, or None (tests, debugging)."""
        h &= HASH_MASK
        tag = (h ^ salt) or 1
        stripe = h & self.smask
        base = self.rate + stripe * self.per * WORDS
        mask = self.per - 1
        i = (tag >> 20) & mask
        for j in range(PROBES):
            o = base + ((i + j) & mask) * WORDS
            if self.q[o] == tag:
                return self.d[o + 1], self.d[o + 2], self.d[o + 3], self.d[o + 4]
        return None

    # -- in-flight counters (limit-conn) ------------------------------------------------------------------------------
    def enter(self, h: int, limit: int) -> int:
        """One more request in flight for key hash ``h`` if fewer than ``limit`` are. Returns the slot (>= 0, to give
        to ``leave``), -1 when refused, -2 when admitted without a slot (the table is full, or its lock is stuck)."""
        if self.position < 0 and not self.claimed:
            self.claim()  # a process that made the table and was not forked from it (tests)
        stripe = h & self.smask
        lock = self.locks[stripe]
        if not lock.acquire(False) and not lock.acquire(True, LOCK_WAIT) and not self._stuck(stripe):
            return -2
        try:
            q = self.q
            q[stripe] = PID
            base = self.conn + stripe * self.cper * CWORDS
            mask = self.cper - 1
            tag = h or 1
            i = (tag >> 20) & mask
            o = -1
            free = -1
            for j in range(PROBES):
                s = base + ((i + j) & mask) * CWORDS
                t = q[s]
                if t == tag:
                    o = s
                    break
                if t == 0:
                    if free < 0:
                        free = s
                    break
                if free < 0 and q[s + 1] <= 0:
                    free = s
            if o < 0:
                if free < 0:
                    stats["conn_table_full"] += 1
                    return -2
                o = free
                q[o] = tag
                q[o + 1] = 0
            total = q[o + 1]
            if total >= limit:
                return -1
            q[o + 1] = total + 1
            pos = self.position
            if pos >= 0:
                q[self.counts + pos * self.conn_slots + (o - self.conn) // CWORDS] += 1
            return o
        finally:
            lock.release()

    def leave(self, o: int) -> None:
        """The request counted in slot ``o`` by ``enter`` is over."""
        if o < 0:
            return
        index = (o - self.conn) // CWORDS
        stripe = index // self.cper
        lock = self.locks[stripe]
        if not lock.acquire(False) and not lock.acquire(True, LOCK_WAIT) and not self._stuck(stripe):
            return
        try:
            q = self.q
            q[stripe] = PID
            if q[o + 1] > 0:
                q[o + 1] -= 1
            pos = self.position
            if pos >= 0:
                c = self.counts + pos * self.conn_slots + index
                if q[c] > 0:
                    q[c] -= 1
        finally:
            lock.release()

    def in_flight(self, h: int) -> int:
        """Requests in flight for key hash ``h`` (tests, debugging)."""
        tag = h or 1
        stripe = h & self.smask
        base = self.conn + stripe * self.cper * CWORDS
        mask = self.cper - 1
        i = (tag >> 20) & mask
        for j in range(PROBES):
            s = base + ((i + j) & mask) * CWORDS
            if self.q[s] == tag:
                return self.q[s + 1]
        return 0

    # -- worker positions ---------------------------------------------------------------------------------------------
    def claim(self) -> int:
        """Take a position for this process's in-flight shares, first taking back those of dead processes."""
        self.claimed = True
        if not self.shared:
            self.position = 0
            return 0
        q = self.q
        mine = -1
        if not self.meta.acquire(True, LOCK_WAIT):
            return -1
        try:
            for p in range(self.positions):
                pid = q[self.pids + p]
                if pid == PID:
                    mine = p
                    continue
                if pid and not _alive(pid):
                    self._reclaim(p)
                    q[self.pids + p] = 0
                    pid = 0
                if not pid and mine < 0:
                    mine = p
            if mine >= 0:
                q[self.pids + mine] = PID
        finally:
            self.meta.release()
        self.position = mine
        return mine

    def _reclaim(self, p: int) -> None:
        """Subtract dead position ``p``'s shares from the totals (under ``meta``; each stripe under its lock)."""
        q = self.q
        start = self.counts + p * self.conn_slots
        column = q[start:start + self.conn_slots].tolist()
        freed = 0
        for stripe in range(self.stripes):
            lo = stripe * self.cper
            held = [(i, c) for i, c in enumerate(column[lo:lo + self.cper], lo) if c]
            if not held:
                continue
            lock = self.locks[stripe]
            if not lock.acquire(True, LOCK_WAIT) and not self._stuck(stripe, have_meta=True):
                continue
            try:
                for i, c in held:
                    total = self.conn + i * CWORDS + 1
                    q[total] = max(0, q[total] - c)
                    q[start + i] = 0
                    freed += c
            finally:
                lock.release()
        if freed:
            log.warning("in-flight requests of a dead worker released", extra={"fields": {
                "event": "limit_conn_reclaimed", "requests": freed}})


def create(workers: int = 1, slots: int = DEFAULT_SLOTS, conn_slots: int = DEFAULT_CONN_SLOTS) -> Table:
    """Make the node's shared table: call before forking the processes that are to share it (the supervisor does)."""
    global _shared
    _shared = Table(slots, conn_slots, positions=max(8, 2 * workers), shared=True)
    return _shared


def table() -> Table:
    """The shared table when one was created before this process was forked, else this process's private one."""
    global _private
    if _shared is not None:
        return _shared
    if _private is None:
        _private = Table(slots=1 << 14, conn_slots=1 << 12, positions=1, shared=False)
    return _private


def _after_fork() -> None:
    global PID
    PID = os.getpid()
    if _private is not None:
        _private.pid = PID
    if _shared is not None:
        _shared.pid = PID
        _shared.position = -1
        _shared.claimed = False
        _shared.claim()  # now, so a crashed predecessor's in-flight shares are given back before this one serves


os.register_at_fork(after_in_child=_after_fork)
