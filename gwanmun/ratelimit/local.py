"""``rate-limiting``'s per-request work with the ``local`` policy: count, decide, and the response fields.

Compiled with mypyc with the proxy (setup.py), because it runs for every request of a limited route and the issue's
bar is 10% of a request's cost: the plugin (``gwanmun.plugins.rate_limiting``, pure Python, with its pydantic
config) builds one ``LocalCheck`` and hands the chain its bound ``access``, so the proxy calls compiled code directly.
The response fields are known at access time and given with ``Ctx.add_response_lines`` (no header_filter phase). Rare paths (the first request's id resolution, a refusal) go back to the plugin.
"""

from __future__ import annotations

from math import ceil
from time import time
from typing import Any, Callable

from gwanmun.observability.metrics import _name
from gwanmun.observability.recorder import CURRENT, Recorder
from gwanmun.plugins.context import Ctx, Reply

from . import shared, stats
from .algorithms import code_of
from .shared import HASH_MASK
from .periods import Period



class LocalCheck:
    """One plugin instance's counting against the node's shared table (``shared.table()``)."""

    def __init__(self, plugin: Any, periods: tuple[Period, ...], step: Callable[..., Any],
                 identify: Callable[[Ctx], str], by_ip: bool, head: bytes, item: bytes, limit: bytes, name: str,
                 emit: bool) -> None:
        self.plugin = plugin  # the RateLimiting that built it: its stable id, refusals, multi-period fields
        self.periods = periods
        self.step = step
        self.identify = identify
        self.by_ip = by_ip  # limit_by ip: the key is ctx.client_ip, read directly
        # one period's response lines: the fixed ones up to "X-RateLimit-Remaining-<Period>: ", the period's item
        # name in RateLimit ('"minute"') and its limit
        self.head = head
        self.item = item
        self.limit = limit
        self.one = len(periods) == 1
        self.period = periods[0]
        self.alg = code_of(step)
        if self.alg < 0:
            self.one = False  # another step function (tests): the generic path
        self.name = name
        self.emit = emit  # not hide_client_headers
        self.table: shared.Table | None = None
        self.lhash = 0
        # metrics (_allowed): the last admitted request's route, service and recorder, and their counter cell
        self.route: Any = None
        self.service: Any = None
        self.rec: Recorder | None = None
        self.names = ("", "")
        self.cell: list[int] = [0]
        self.t = -1  # the last RateLimit t, and as bytes (block1)
        self.tb = b""

    def access(self, ctx: Ctx) -> Reply | None:
        table = self.table
        if table is None:  # this instance's first request in this process
            plugin = self.plugin
            if plugin.lid is None:
                plugin._resolve(ctx)
            self.lhash = plugin.lhash & HASH_MASK
            table = self.table = shared.table()
        key = ctx.client_ip if self.by_ip else self.identify(ctx)
        h = self.lhash ^ (hash(key) & HASH_MASK)
        if self.one:  # no allocation for the check itself (Table.hit1)
            status, retry, rem, reset = table.hit1(h, self.alg, self.period, time())
            if status > 0:
                if self.emit:  # the response fields, now: no header_filter phase (Ctx.add_response_lines)
                    block = self.block1(rem, reset)
                    if ctx.response_lines:
                        ctx.response_lines += block
                    else:
                        ctx.response_lines = block
                self._allowed(ctx)
                return None
            if status < 0:
                self._stuck(ctx)
                return None
            results = [(rem, reset)]
        else:
            res = table.hit(h, self.step, self.periods, time())
            if res is None:
                self._stuck(ctx)
                return None
            results = res[2]
            if res[0]:
                if self.emit:
                    ctx.response_lines += self.block(results)
                self._count(ctx, "allowed")
                return None
            retry = res[1]
        self._count(ctx, "rejected")
        refused: Reply = self.plugin._refuse(retry, results)
        return refused

    def _stuck(self, ctx: Ctx) -> None:
        """The table's lock is stuck: the request goes through (counted)."""
        stats["local_failures"] += 1
        self._count(ctx, "error")

    def _allowed(self, ctx: Ctx) -> None:
        """Count an admitted request: ``_count`` with the counter cell of the last route and service kept."""
        rec: Recorder | None = CURRENT.rec
        if rec is None:
            return
        route = ctx.route
        service = ctx.service
        if route is not self.route or service is not self.service or rec is not self.rec:
            self.route, self.service, self.rec = route, service, rec
            self.names = (_name(service), _name(route))
            self.cell = rec.ratelimit_cell(self.name, self.names[0], self.names[1], "allowed")
        self.cell[0] += 1

    def _count(self, ctx: Ctx, decision: str) -> None:
        """gwanmun_ratelimit_decisions_total (as observability.metrics.ratelimit)."""
        rec: Recorder | None = CURRENT.rec
        if rec is None:
            return
        rec.ratelimit(self.name, _name(ctx.service), _name(ctx.route), decision)

    def block(self, results: list[tuple[float, float]]) -> bytes:
        """The response fields for a decision, as finished lines."""
        if self.one:
            rem, reset = results[0]
            return self.block1(rem, reset)
        out: bytes = self.plugin.block(results)
        return out

    def block1(self, rem: float, reset: float) -> bytes:
        """``block`` for one period."""
        rb = b"%d" % (int(rem) if rem > 0 else 0)
        t = ceil(reset) if reset > 1 else 1
        if t != self.t:  # changes once a second
            self.t = t
            self.tb = b"%d" % t
        tb = self.tb
        # a literal format of bytes: compiled, one sized concatenation (a format held in a variable would be parsed
        # on every call, and each %d is a conversion)
        return b"%b%b\r\nRateLimit: %b;r=%b;t=%b\r\nRateLimit-Limit: %b\r\nRateLimit-Remaining: %b\r\nRateLimit-Reset: %b\r\n" % (
            self.head, rb, self.item, rb, tb, self.limit, rb, tb)
