"""An example third-party plugin for gwanmun: ``response-time``.

It adds a header with the time from the request's arrival to the response head (``X-Response-Time-Ms`` by default)
and can refuse methods it is told to. Install it next to gwanmun (``pip install ./examples/plugins/response-time``)
and configure it like any plugin::

    plugins:
    - name: response-time
      config: {header: X-Upstream-Time, deny_methods: [TRACE]}

gwanmun finds it through the ``gwanmun.plugins`` entry point declared in pyproject.toml.
"""

from __future__ import annotations

import time

from pydantic import Field

from gwanmun.plugins import Ctx, Plugin, PluginConfig, Reply, Response


class ResponseTimeConfig(PluginConfig):
    header: str = Field("X-Response-Time-Ms", pattern=r"^[A-Za-z0-9-]+$")
    deny_methods: list[str] = Field(default_factory=list)


class ResponseTime(Plugin):
    name = "response-time"
    priority = 5  # late on the request side, early on the response side
    Config = ResponseTimeConfig

    def __init__(self, config: ResponseTimeConfig, env) -> None:
        super().__init__(config, env)
        self.deny = frozenset(m.upper() for m in config.deny_methods)
        self.served = 0  # requests seen by this instance (kept across reloads, see carry_over)

    def carry_over(self, old: Plugin) -> None:
        self.served = getattr(old, "served", 0)

    def access(self, ctx: Ctx) -> Reply | None:
        if ctx.method in self.deny:
            return Reply.error_(405, "Method not allowed here")
        self.served += 1
        return None

    def header_filter(self, ctx: Ctx, resp: Response) -> None:
        ms = (time.perf_counter() - ctx.started) * 1000  # ctx.started is perf_counter() at the request's head
        resp.headers.set(self.config.header, f"{ms:.2f}")
        resp.headers.set("X-Served-Count", str(self.served))
