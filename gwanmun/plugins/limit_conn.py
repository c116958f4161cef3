"""``limit-conn``: at most ``conn`` requests in flight per key (APISIX's limit-conn semantics; priority 905, just below
``rate-limiting``, so a rate-limited request never holds a slot). docs/rate-limiting.md.

The count is shared by every worker of a node (``gwanmun.ratelimit.shared``): taken in ``access``, given back in
``log``, which runs once for every request, answered, refused, failed or abandoned by its client. A worker that dies
with requests in flight cannot give them back; its replacement takes back the dead worker's share when it starts
(each worker's share is kept apart), so nothing leaks past a restart. Over the limit: ``rejected_code`` (503) with a
JSON error body. The key is ``key``, with rate-limiting's ``limit_by`` values (``_limits``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gwanmun.plugins._limits import identity, scope_of, stable_id
from gwanmun.plugins._traffic import Record, check_header_name
from gwanmun.plugins.base import BuildEnv, Ctx, Plugin, Reply
from gwanmun.ratelimit import shared

SHARED_KEY = "limit-conn"  # ctx.shared: (table, slot) of a request counted in flight


class LimitConnConfig(Record):
    conn: int = Field(gt=0)
    key: Literal["consumer", "credential", "ip", "service", "header", "path", "consumer-group"] = "consumer"
    header_name: str | None = None
    path: str | None = None
    rejected_code: int = Field(503, ge=200, le=599)
    rejected_message: str = "Too many requests in flight"

    @field_validator("header_name")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else check_header_name(v)

    @model_validator(mode="after")
    def _check(self) -> LimitConnConfig:
        if self.key == "header" and not self.header_name:
            raise ValueError("header_name: required field missing (key is header)")
        if self.key == "path" and not (self.path and self.path.startswith("/")):
            raise ValueError("path: required, starting with /, when key is path")
        return self


class LimitConn(Plugin):
    name = "limit-conn"
    priority = 905
    Config = LimitConnConfig

    def __init__(self, config: LimitConnConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.identify = identity(config.key, config.header_name, config.path)
        self.counted = {"key": config.key, "header_name": config.header_name, "path": config.path}
        self.lhash: int | None = None
        self.table: shared.Table | None = None

    def carry_over(self, old: Plugin) -> None:
        if isinstance(old, LimitConn) and old.lhash is not None:
            self.lhash = old.lhash

    def access(self, ctx: Ctx) -> Reply | None:
        lhash = self.lhash
        if lhash is None:
            lhash = self.lhash = hash(stable_id(self.name, scope_of(self, ctx), self.counted))
        table = self.table
        if table is None:
            table = self.table = shared.table()
        slot = table.enter(hash((lhash, self.identify(ctx))), self.config.conn)
        if slot >= 0:
            ctx.shared[SHARED_KEY] = (table, slot)
        elif slot == -1:
            return Reply.error_(self.config.rejected_code, self.config.rejected_message)
        return None

    def log(self, ctx: Ctx) -> None:
        held = ctx.shared.pop(SHARED_KEY, None)  # whichever limit-conn instance's log runs: once per request
        if held is not None:
            held[0].leave(held[1])
