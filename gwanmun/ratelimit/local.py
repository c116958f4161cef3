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

from gwanmun.observability import metrics
from gwanmun.plugins.context import Ctx, Reply

from . import shared, stats
from .periods import Period



def _name(entity: Any) -> str:
    if entity is None:
        return ""
    return str(getattr(entity, "name", None) or getattr(entity, "id", None) or "")


class LocalCheck:
    """One plugin instance's counting against the node's shared table (``shared.table()``)."""

    def __init__(self, plugin: Any, periods: tuple[Period, ...], step: Callable[..., Any],
                 identify: Callable[[Ctx], str], by_ip: bool, template: bytes, name: str, emit: bool) -> None:
        self.plugin = plugin  # the RateLimiting that built it: its stable id, refusals, multi-period fields
        self.periods = periods
        self.step = step
        self.identify = identify
        self.by_ip = by_ip  # limit_by ip: the key is ctx.client_ip, read directly
        self.template = template  # one period's response lines, a %-format of (r, r, t, r, t)
        self.one = len(periods) == 1
        self.name = name
        self.emit = emit  # not hide_client_headers
        self.table: shared.Table | None = None
        self.lhash = 0
        self.route: Any = None  # the last request's route and service, and their names (metrics)
        self.service: Any = None
        self.names = ("", "")

    def access(self, ctx: Ctx) -> Reply | None:
        table = self.table
        if table is None:  # this instance's first request in this process
            plugin = self.plugin
            if plugin.lid is None:
                plugin._resolve(ctx)
            self.lhash = plugin.lhash
            table = self.table = shared.table()
        key = ctx.client_ip if self.by_ip else self.identify(ctx)
        res = table.hit(self.lhash ^ hash(key), self.step, self.periods, time())
        if res is None:  # the table's lock is stuck: let the request through
            stats["local_failures"] += 1
            self._count(ctx, "error")
            return None
        if res[0]:
            if self.emit:  # the response fields, now: no header_filter phase (Ctx.add_response_lines)
                ctx.response_lines += self.block(res[2])
            self._count(ctx, "allowed")
            return None
        self._count(ctx, "rejected")
        refused: Reply = self.plugin._refuse(res[1], res[2])
        return refused

    def _count(self, ctx: Ctx, decision: str) -> None:
        """gwanmun_ratelimit_decisions_total (as observability.metrics.ratelimit), with the names of the last route
        and service kept: a plugin mostly sees one route."""
        rec = metrics._recorder
        if rec is None:
            return
        route = ctx.route
        service = ctx.service
        if route is not self.route or service is not self.service:
            self.route, self.service = route, service
            self.names = (_name(service), _name(route))
        rec.ratelimit(self.name, self.names[0], self.names[1], decision)

    def block(self, results: list[tuple[float, float]]) -> bytes:
        """The response fields for a decision, as finished lines."""
        if self.one:
            rem, reset = results[0]
            r = int(rem) if rem > 0 else 0
            t = ceil(reset) if reset > 1 else 1
            return self.template % (r, r, t, r, t)
        out: bytes = self.plugin.block(results)
        return out
