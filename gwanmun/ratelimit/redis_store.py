"""The ``redis`` store: counters in Redis, shared by every node, checked and counted by one Lua script per request.

**One round trip, atomic.** ``SCRIPT`` gets one key per period (all with the same ``{hash tag}``, so they share a
cluster slot) and does what ``algorithms`` does, in Lua: read every period's state, decide, and only if every period
admits the request, write them all (with an expiry). Redis runs a script alone, so concurrent requests from any
number of nodes and workers are serialised: a fixed window admits exactly its limit. The script reads the clock of
the Redis server (``TIME``), not the node's, so nodes whose clocks differ still agree on every window boundary.
It is sent with ``EVALSHA``; after ``NOSCRIPT`` (a restarted or flushed Redis) it is loaded again and the calls
that met ``NOSCRIPT`` are sent again. Calls made in the same turn of a worker's event loop go out as one pipeline
(each still one script and one round trip), which halves redis-py's CPU cost per request under load.

**Failures.** Every call has one deadline (``timeout``: connecting, waiting for a pooled connection, the command),
redis-py's own retries are off, and the pool is bounded. A failed call raises ``StoreUnavailable``; after a failure
the store does not try Redis again for a short, growing pause (``BACKOFF``: 50 ms doubling to 1 s), so a dead Redis
costs nothing per request and is tried again by itself. Clients are per process and event loop, shared by every
plugin with the same settings, and survive reloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

SCRIPT = r"""
-- KEYS[i]: the counter of period i. ARGV: algorithm ('fixed' | 'sliding' | 'gcra'), now ('' = the server's clock),
-- then per period: kind (its length in seconds; -1 calendar month, -2 calendar year) and limit.
-- Returns {admitted (1/0), retry_after_ms, remaining_1, reset_ms_1, remaining_2, reset_ms_2, ...}.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local floor = math.floor
local algo = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function civil(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = m <= 2 and m + 9 or m - 3
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function window(kind)
  if kind > 0 then
    local idx = floor(now / kind)
    return idx, idx * kind, kind
  end
  local y, m = civil(floor(now / 86400))
  if kind == -1 then
    local s = days_from_civil(y, m, 1) * 86400
    local ny, nm = y, m + 1
    if nm > 12 then ny, nm = y + 1, 1 end
    return y * 12 + m - 1, s, days_from_civil(ny, nm, 1) * 86400 - s
  end
  local s = days_from_civil(y, 1, 1) * 86400
  return y, s, days_from_civil(y + 1, 1, 1) * 86400 - s
end

local n = #KEYS
local admitted = true
local retry = 0
local res = {}
for i = 1, n do
  local kind = tonumber(ARGV[1 + 2 * i])
  local limit = tonumber(ARGV[2 + 2 * i])
  local idx, start, size = window(kind)
  local finish = start + size
  local r = {key = KEYS[i]}
  if algo == 'gcra' then
    local interval = size / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or '-1')
    if tat < now then tat = now end
    local new = tat + interval
    if new - now <= size + interval * 1e-3 then
      r.ok, r.tat, r.ttl = true, new, new - now
      r.rem = floor((size - (new - now)) / interval + 1e-3)
      r.reset = new - now
    else
      r.ok, r.rem, r.reset, r.retry = false, 0, tat - now, new - size - now
    end
  else
    local st = redis.call('HMGET', KEYS[i], 'w', 'a', 'b')
    local w, a, b = tonumber(st[1] or '-1'), tonumber(st[2] or '0'), tonumber(st[3] or '0')
    if w < idx then
      if algo == 'sliding' and w == idx - 1 then b, a = a, 0 else b, a = 0, 0 end
    end
    if algo == 'fixed' then
      b = 0
      if a + 1 <= limit then
        r.ok, r.w, r.a, r.b, r.ttl = true, idx, a + 1, 0, finish - now
        r.rem, r.reset = limit - a - 1, finish - now
      else
        r.ok, r.rem, r.reset, r.retry = false, 0, finish - now, finish - now
      end
    else
      local elapsed = now - start
      local est = b * (1 - elapsed / size) + a
      if est + 1 <= limit then
        local left = limit - est - 1
        if left < 0 then left = 0 end
        r.ok, r.w, r.a, r.b, r.ttl = true, idx, a + 1, b, finish + size - now
        r.rem, r.reset = floor(left), finish - now
      else
        local rt
        if a + 1 <= limit then
          if b > 0 then rt = size * (1 - (limit - 1 - a) / b) - elapsed else rt = 0 end
        elseif a > 0 then
          local f = 1 - (limit - 1) / a
          if f < 0 then f = 0 end
          rt = (finish - now) + size * f
        else
          rt = finish - now + size
        end
        if rt < 0 then rt = 0 end
        r.ok, r.rem, r.reset, r.retry = false, 0, finish - now, rt
      end
    end
  end
  if not r.ok then
    admitted = false
    if r.retry > retry then retry = r.retry end
  end
  res[i] = r
end

local out = {admitted and 1 or 0, math.ceil(retry * 1000)}
for i = 1, n do
  local r = res[i]
  if admitted then
    local ms = math.ceil(r.ttl * 1000) + 1000
    if algo == 'gcra' then
      redis.call('SET', r.key, string.format('%.6f', r.tat), 'PX', ms)
    else
      redis.call('HSET', r.key, 'w', string.format('%d', r.w), 'a', string.format('%.17g', r.a),
                 'b', string.format('%.17g', r.b))
      redis.call('PEXPIRE', r.key, ms)
    end
    out[1 + 2 * i] = r.rem
  else
    out[1 + 2 * i] = r.ok and r.rem + 1 or r.rem
  end
  out[2 + 2 * i] = math.ceil(r.reset * 1000)
end
return out
"""

SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
BACKOFF = (0.05, 1.0)  # first pause after a failure, cap (doubling)
POOL_SIZE = 64


class StoreUnavailable(Exception):
    """Redis could not answer within the deadline (down, unreachable, slow, refused the script)."""


class RedisSettings(tuple):
    """(host, port, database, username, password, ssl, ssl_verify, timeout_s): hashable, one client per value."""

    __slots__ = ()

    def __new__(cls, host: str, port: int = 6379, database: int = 0, username: str | None = None,
                password: str | None = None, ssl: bool = False, ssl_verify: bool = False,
                timeout: float = 0.05) -> RedisSettings:
        return super().__new__(cls, (host, port, database, username, password, ssl, ssl_verify, timeout))

    @property
    def timeout(self) -> float:
        return self[7]

    def __repr__(self) -> str:  # never the password
        return f"RedisSettings({self[0]}:{self[1]}/{self[2]}, timeout={self[7]})"


class RedisStore:
    """A connection pool to one Redis (per process and event loop) and the script call, with the failure pause."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.timeout = settings.timeout
        self.client: Any = None
        self.pid = 0
        self.loop: Any = None
        self.down_until = 0.0  # monotonic; no call before then
        self.failures = 0  # in a row
        self.errors = 0  # calls that failed (this process)
        self.skipped = 0  # calls not tried during a pause
        self.last_error = ""
        self.batch: list = []  # calls of this turn of the loop: (keys, args, future)
        self.tasks: set = set()

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self.client is None or self.loop is not loop or self.pid != os.getpid():
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            host, port, db, username, password, ssl, ssl_verify, timeout = self.settings
            kw: dict[str, Any] = {}
            if ssl:
                kw = {"connection_class": aioredis.SSLConnection, "ssl_cert_reqs": "required" if ssl_verify else "none",
                      "ssl_check_hostname": bool(ssl_verify)}
            pool = aioredis.BlockingConnectionPool(
                host=host, port=port, db=db, username=username, password=password, socket_timeout=timeout,
                socket_connect_timeout=timeout, timeout=timeout, max_connections=POOL_SIZE,
                retry=Retry(NoBackoff(), 0), **kw)
            self.client = aioredis.Redis(connection_pool=pool)
            self.loop = loop
            self.pid = os.getpid()
        return self.client

    async def run(self, keys: list[str], args: list[Any]) -> list[int]:
        """The script's reply. Raises ``StoreUnavailable`` (at once while paused after a failure).

        Calls made in the same turn of the event loop go out together, as one pipeline on one connection: each is
        still its own atomic script and its own single round trip, but a busy worker pays redis-py's per-call
        machinery once per batch instead of once per request."""
        if self.down_until and time.monotonic() < self.down_until:
            self.skipped += 1
            raise StoreUnavailable(self.last_error or "paused after a failure")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.batch.append((keys, args, fut))
        if len(self.batch) == 1:
            loop.call_soon(self._send)
        return await fut

    def _send(self) -> None:
        batch, self.batch = self.batch, []
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _execute(self, batch: list) -> None:
        try:
            client = self._client()
            async with asyncio.timeout(self.timeout):
                replies = await self._pipeline(client, [(k, a) for k, a, _ in batch])
                redo = [i for i, r in enumerate(replies) if isinstance(r, Exception) and _noscript(r)]
                if redo:  # a restarted or flushed Redis: EVAL caches the script again
                    await client.script_load(SCRIPT)
                    again = await self._pipeline(client, [(batch[i][0], batch[i][1]) for i in redo])
                    for i, r in zip(redo, again):
                        replies[i] = r
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections, protocol errors
            self._failed(exc)
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreUnavailable(self.last_error))
            return
        self.failures = 0
        self.down_until = 0.0
        for (_, _, fut), r in zip(batch, replies):
            if fut.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(r, Exception):  # a script error: this call failed, Redis is fine
                self.errors += 1
                fut.set_exception(StoreUnavailable(f"{type(r).__name__}: {r}"))
            else:
                fut.set_result(r)

    @staticmethod
    async def _pipeline(client: Any, calls: list) -> list:
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(SHA, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        pause = min(BACKOFF[1], BACKOFF[0] * 2 ** (self.failures - 1))
        self.down_until = time.monotonic() + pause

    async def hit(self, keys: list[str], algorithm: str, periods: tuple, now: float | None = None
                  ) -> tuple[bool, float, list[tuple[float, float]]]:
        """Count one request against ``periods`` (``periods.Period``), one key each: ``(admitted, retry_after,
        [(remaining, reset), ...])`` as the local store answers. ``now`` replaces the server's clock (tests)."""
        args: list[Any] = [algorithm, "" if now is None else repr(now)]
        for p in periods:
            args.append(repr(p.kind))
            args.append(repr(p.limit))
        r = await self.run(keys, args)
        return bool(r[0]), r[1] / 1000.0, [(float(r[2 + 2 * i]), r[3 + 2 * i] / 1000.0) for i in range(len(periods))]

    async def aclose(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # noqa: BLE001
                pass


def _noscript(exc: Exception) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")


_stores: dict[RedisSettings, RedisStore] = {}


def store(settings: RedisSettings) -> RedisStore:
    """The process's store for these settings (shared by plugins, kept across reloads)."""
    s = _stores.get(settings)
    if s is None:
        s = _stores[settings] = RedisStore(settings)
    return s
