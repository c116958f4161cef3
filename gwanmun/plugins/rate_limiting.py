"""``rate-limiting``: Kong's plugin (priority 910, its config fields), with limits that are exact across the workers
of a node (``policy: local``) and across nodes (``policy: redis``), and a choice of algorithm. docs/rate-limiting.md.

For each request, the key (``limit_by``, see ``_limits``) is counted against every configured period (``second`` ...
``year``) in one atomic step: admitted only if every period has room, and then counted in every period. Refused:
``error_code`` (429) with a JSON ``{"message": error_message, "request_id": ...}`` body and ``Retry-After``.

The local policy's ``access`` is synchronous (about a microsecond in shared memory, no task; compiled, in
``gwanmun.ratelimit.local``); the redis policy's is a coroutine (one Redis round trip). The response fields (unless
``hide_client_headers``) are known once the request is counted, so access gives them with ``ctx.add_response_lines``
(no header_filter phase); they are on whatever the client gets, the upstream's response or a gateway error:

- ``RateLimit-Policy: "minute";q=100;w=60`` and ``RateLimit: "minute";r=99;t=42`` (IETF httpapi draft: one item per
  period; ``q`` quota, ``w`` window seconds, ``r`` remaining, ``t`` seconds until the quota is whole again);
- Kong's ``X-RateLimit-Limit-Minute`` / ``X-RateLimit-Remaining-Minute`` per period, and ``RateLimit-Limit``,
  ``RateLimit-Remaining``, ``RateLimit-Reset`` for the period with the fewest requests left.

When the store fails (Redis down or slow: every call has a deadline), ``fault_tolerant: true`` lets the request
through without headers, ``false`` answers 500 "An unexpected error occurred" (Kong's answer); never 401/403. Each
failure is counted (``gwanmun.ratelimit.stats``) and logged at most every ``LOG_EVERY`` seconds.
"""

from __future__ import annotations

import logging
import time as _time
from math import ceil
from time import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gwanmun.observability.metrics import ratelimit as count_decision  # gwanmun_ratelimit_decisions_total
from gwanmun.plugins._limits import LIMIT_BY, identity, scope_of, stable_id
from gwanmun.plugins._traffic import Record, check_header_name
from gwanmun.plugins.base import BuildEnv, Ctx, Plugin, Reply
from gwanmun.ratelimit import algorithms, stats
from gwanmun.ratelimit.local import LocalCheck
from gwanmun.ratelimit.periods import NOMINAL, ORDER, Period
from gwanmun.ratelimit.redis_store import RedisSettings, StoreUnavailable, store  # redis-py is imported on first use

log = logging.getLogger("gwanmun")

LOG_EVERY = 10.0  # seconds between two log lines about a failing store (per plugin)
FAILED = "An unexpected error occurred"
_SALTS = {name: (0x9E3779B97F4A7C15 * (i + 1)) & 0x0FFFFFFFFFFFFFFF for i, name in enumerate(ORDER)}  # 60 bits
_REDIS_SHORTHANDS = ("host", "port", "password", "username", "ssl", "ssl_verify", "server_name", "timeout",
                     "database")


class RedisConfig(Record):
    """Kong 3.x's shared ``redis`` record. ``timeout`` in milliseconds, one deadline per Redis call (Kong's
    default is 2000; ours 50: a rate limit must not hold a request up)."""

    host: str | None = None
    port: int = Field(6379, ge=1, le=65535)
    timeout: int = Field(50, ge=1, le=60000)
    username: str | None = None
    password: str | None = None
    database: int = Field(0, ge=0)
    ssl: bool = False
    ssl_verify: bool = False
    server_name: str | None = None


class RateLimitingConfig(Record):
    second: float | None = Field(None, gt=0)
    minute: float | None = Field(None, gt=0)
    hour: float | None = Field(None, gt=0)
    day: float | None = Field(None, gt=0)
    month: float | None = Field(None, gt=0)
    year: float | None = Field(None, gt=0)
    limit_by: Literal["consumer", "credential", "ip", "service", "header", "path", "consumer-group"] = "consumer"
    header_name: str | None = None
    path: str | None = None
    policy: Literal["local", "redis"] = "local"
    fault_tolerant: bool = True
    redis: RedisConfig = Field(default_factory=RedisConfig)  # type: ignore[arg-type]
    hide_client_headers: bool = False
    error_code: int = Field(429, ge=100, le=599)
    error_message: str = "API rate limit exceeded"
    sync_rate: float = -1  # Kong's: counters are always written synchronously here (exact); accepted for configs
    algorithm: Literal["fixed", "sliding", "gcra"] = "sliding"  # gwanmun's

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        """Kong's deprecated flat ``redis_host`` ... ``redis_database`` fields go into the ``redis`` record (a set
        flat field wins, as in Kong); ``policy: cluster`` gets a clear message."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        redis = data.get("redis")
        redis = dict(redis) if isinstance(redis, dict) else ({} if redis is None else redis)
        for name in _REDIS_SHORTHANDS:
            value = data.pop(f"redis_{name}", None)
            if value is not None and isinstance(redis, dict):
                redis[name] = value
        if redis != {} or "redis" in data:
            data["redis"] = redis
        if data.get("policy") == "cluster":
            raise ValueError("policy 'cluster' (counters in Kong's database) is not supported: use 'local' (exact "
                             "per node) or 'redis' (exact across nodes)")
        return data

    @field_validator("header_name")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else check_header_name(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("should start with: /")
        return v

    @model_validator(mode="after")
    def _check(self) -> RateLimitingConfig:
        limits = [(p, getattr(self, p)) for p in ORDER if getattr(self, p) is not None]
        if not limits:
            raise ValueError("at least one of these fields must be non-empty: 'second', 'minute', 'hour', 'day', "
                             "'month', 'year'")
        for i, (lower, v1) in enumerate(limits):
            for upper, v2 in limits[i + 1:]:
                if v2 < v1:
                    raise ValueError(f"The limit for {upper}({v2:.1f}) cannot be lower than the limit for "
                                     f"{lower}({v1:.1f})")
        if self.policy != "redis" and self.sync_rate != -1:
            raise ValueError("sync_rate can only be used with the redis policy")
        if self.policy == "redis" and not self.redis.host:
            raise ValueError("redis.host: required field missing (policy is redis)")
        if self.limit_by == "header" and not self.header_name:
            raise ValueError("header_name: required field missing (limit_by is header)")
        if self.limit_by == "path" and not self.path:
            raise ValueError("path: required field missing (limit_by is path)")
        return self


assert set(LIMIT_BY) == set(RateLimitingConfig.model_fields["limit_by"].annotation.__args__)  # type: ignore[union-attr]


def _num(v: float) -> bytes:
    return b"%d" % v if float(v).is_integer() else repr(float(v)).encode()


class RateLimiting(Plugin):
    name = "rate-limiting"
    priority = 910
    Config = RateLimitingConfig

    def __init__(self, config: RateLimitingConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.periods = tuple(Period(p, getattr(config, p), _SALTS[p]) for p in ORDER if getattr(config, p))
        self.step = algorithms.ALGORITHMS[config.algorithm]
        self.identify = identity(config.limit_by, config.header_name, config.path)
        self.counted = {"limit_by": config.limit_by, "header_name": config.header_name, "path": config.path,
                        "algorithm": config.algorithm}
        self.lid: str | None = None  # stable_id(), known at the first request
        self.lhash = 0  # hash(lid): the local store's key prefix
        self.redis: Any = None
        self.last_log = 0.0
        self.unlogged = 0
        # response fields: what never changes is built once
        self.static = [(b"RateLimit-Policy", b", ".join(
            b'"%s";q=%s;w=%d' % (p.name.encode(), _num(p.limit), NOMINAL[p.name]) for p in self.periods))]
        self.static += [(b"X-RateLimit-Limit-" + p.name.title().encode(), _num(p.limit)) for p in self.periods]
        self.per = [(b"X-RateLimit-Remaining-" + p.name.title().encode(), b'"' + p.name.encode() + b'";r=%d;t=%d',
                     _num(p.limit), NOMINAL[p.name]) for p in self.periods]
        # one period (the usual case): what its response lines hold that never changes (see LocalCheck.block)
        p0 = self.per[0]
        self.head = b"".join(b"%b: %b\r\n" % f for f in self.static) + p0[0] + b": "
        self.item = b'"%s"' % self.periods[0].name.encode()
        self.limit0 = p0[2]
        if config.policy == "local":
            # the per-request work is compiled (ratelimit/local.py): the chain calls its bound methods directly
            check = LocalCheck(self, self.periods, self.step, self.identify, config.limit_by == "ip", self.head,
                               self.item, self.limit0, self.name,
                               not config.hide_client_headers)
            self.access = check.access  # type: ignore[method-assign]
        else:
            r = config.redis
            self.redis = store(RedisSettings(r.host or "", r.port, r.database, r.username, r.password, r.ssl,
                                             r.ssl_verify, r.timeout / 1000.0))
            self.access = self.access_redis  # type: ignore[method-assign,assignment]

    def carry_over(self, old: Plugin) -> None:
        """Same name, config and scope: the same counters (they are in the shared store, by a stable id)."""
        if isinstance(old, RateLimiting) and old.lid is not None:
            self.lid, self.lhash = old.lid, old.lhash

    def _resolve(self, ctx: Ctx) -> None:
        self.lid = stable_id(self.name, scope_of(self, ctx), self.counted)
        self.lhash = hash(self.lid)

    # -- access ---------------------------------------------------------------------------------------------------
    async def access_redis(self, ctx: Ctx) -> Reply | None:
        if self.lid is None:
            self._resolve(ctx)
        ident = self.identify(ctx)
        if len(ident) > 128 or "}" in ident:
            ident = stable_id("key", (), {"k": ident})
        base = f"gwanmun:rl:{{{self.lid}:{ident}}}:"
        try:
            ok, retry, results = await self.redis.hit([base + p.name for p in self.periods],
                                                      self.config.algorithm, self.periods)
        except StoreUnavailable as exc:
            count_decision(ctx, "error", self.name)
            return self._unavailable(str(exc))
        if ok:
            if not self.config.hide_client_headers:
                ctx.add_response_lines(self.block(results))
            count_decision(ctx, "allowed", self.name)
            return None
        count_decision(ctx, "rejected", self.name)
        return self._refuse(retry, results)

    def _refuse(self, retry: float, results: list) -> Reply:
        headers = [("Retry-After", str(max(1, ceil(retry))))]
        if not self.config.hide_client_headers:
            headers += [(n.decode(), v.decode()) for n, v in self.fields(results)]
        return Reply.error_(self.config.error_code, self.config.error_message, headers)

    def _unavailable(self, error: str) -> Reply | None:
        cfg = self.config
        stats["redis_errors"] += 1
        stats["fail_open" if cfg.fault_tolerant else "fail_closed"] += 1
        self.unlogged += 1
        now = _time.monotonic()
        if now - self.last_log >= LOG_EVERY:
            log.error("rate-limiting: the redis store failed", extra={"fields": {
                "event": "rate_limit_store_failed", "plugin": self.name, "error": error,
                "failures": self.unlogged, "fault_tolerant": cfg.fault_tolerant,
                "outcome": "requests let through" if cfg.fault_tolerant else "requests answered 500",
                "redis": f"{cfg.redis.host}:{cfg.redis.port}/{cfg.redis.database}"}})
            self.last_log = now
            self.unlogged = 0
        if cfg.fault_tolerant:
            return None
        return Reply.error_(500, FAILED)

    # -- response -------------------------------------------------------------------------------------------------
    def block(self, results: list) -> bytes:
        """The response fields for a decision, as finished lines."""
        if len(results) == 1:
            rem, reset = results[0]
            r = int(rem) if rem > 0 else 0
            t = ceil(reset) if reset > 1 else 1
            return b"%b%d\r\nRateLimit: %b;r=%d;t=%d\r\nRateLimit-Limit: %b\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n" % (
                self.head, r, self.item, r, t, self.limit0, r, t)
        return b"".join(b"%b: %b\r\n" % f for f in self.fields(results))

    def fields(self, results: list) -> list[tuple[bytes, bytes]]:
        """The response fields for a decision: [(remaining, reset)] per period."""
        if len(results) == 1:  # the common case, straight
            rem, reset = results[0]
            r = int(rem) if rem > 0 else 0
            t = ceil(reset) if reset > 1 else 1
            rb = b"%d" % r
            name, item, limit, _ = self.per[0]
            return [*self.static, (name, rb), (b"RateLimit", item % (r, t)), (b"RateLimit-Limit", limit),
                    (b"RateLimit-Remaining", rb), (b"RateLimit-Reset", b"%d" % t)]
        out = list(self.static)
        items = []
        best = None
        for (rem_name, item, limit, window), (rem, reset) in zip(self.per, results):
            r = int(rem) if rem > 0 else 0
            t = ceil(reset) if reset > 1 else 1
            out.append((rem_name, b"%d" % r))
            items.append(item % (r, t))
            if best is None or r < best[0] or r == best[0] and window > best[3]:
                best = (r, t, limit, window)
        out.append((b"RateLimit", b", ".join(items)))
        if best is not None:
            out.append((b"RateLimit-Limit", best[2]))
            out.append((b"RateLimit-Remaining", b"%d" % best[0]))
            out.append((b"RateLimit-Reset", b"%d" % best[1]))
        return out

    async def aclose(self) -> None:
        """Clients are shared by plugins with the same Redis settings and kept across reloads: nothing to stop."""
