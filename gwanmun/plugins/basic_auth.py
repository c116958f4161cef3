"""``basic-auth``: a user name and password in ``Proxy-Authorization`` or ``Authorization`` (Kong's basic-auth,
priority 1100).

As Kong: ``Proxy-Authorization`` is tried first, then ``Authorization``; the first header whose user name is a known
credential is the one checked. Neither header: 401 "Unauthorized"; a malformed header, an unknown user or a wrong
password: 401 "Invalid authentication credentials"; both with ``WWW-Authenticate: Basic realm="<realm>"``.

Passwords are stored as bcrypt or argon2 hashes, which cost milliseconds to check by design. So:

- A check runs off the event loop, in a small thread pool of its own (a flood of wrong passwords must not occupy
  the default executor the loop uses for DNS and JWKS fetches), and ``access`` returns an awaitable only then.
- A success is remembered for ``CACHE_TTL`` seconds in a bounded LRU keyed by SHA-256 of (credential id, stored hash,
  password): a client that sends the same credentials again is answered synchronously, in microseconds. A changed
  password (a new stored hash) never hits an old entry. Failures are never cached.
- Concurrent checks of the same credentials share one hash computation.
- An unknown user costs a dummy check with the cost parameters of the stored hashes, so response time does not tell
  which user names exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable

from pydantic import field_validator

from gwanmun.auth.secrets import DEFAULT_POLICY, PasswordPolicy, dummy_verify, parse_basic, verify_password
from gwanmun.plugins import identity
from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, Plugin, Reply

log = logging.getLogger("gwanmun.plugins.basic_auth")

UNAUTHORIZED = "Unauthorized"
INVALID = "Invalid authentication credentials"

CACHE_TTL = 60.0  # seconds a verified (credential, password) pair is trusted without hashing again
CACHE_SIZE = 4096

_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$")
_ARGON2 = re.compile(r"\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=(\d+),t=(\d+),p=(\d+)\$")


class BasicAuthConfig(identity.AuthConfig):
    hide_credentials: bool = False
    realm: str = "service"

    @field_validator("realm", mode="before")
    @classmethod
    def _null_realm(cls, v: object) -> object:
        return "service" if v is None else v


# The hashing pool: per process (a pool made before a fork has no threads in the child), created on first use.
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:
        with _pool_lock:
            if _pool is None or _pool_pid != pid:
                _pool = ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)),
                                           thread_name_prefix="gwanmun-password")
                _pool_pid = pid
    return _pool


def _policy_of(stored: str) -> PasswordPolicy | None:
    """The cost parameters of a stored hash, for a dummy check that costs the same."""
    try:
        m = _BCRYPT.match(stored)
        if m:
            return PasswordPolicy(scheme="bcrypt", bcrypt_rounds=int(m.group(1)))
        m = _ARGON2.match(stored)
        if m:
            return PasswordPolicy(scheme="argon2", argon2_memory_cost=int(m.group(1)),
                                  argon2_time_cost=int(m.group(2)), argon2_parallelism=int(m.group(3)))
    except ValueError:
        pass
    return None


class _Entry:
    __slots__ = ("stored", "consumer", "credential", "salt")

    def __init__(self, stored: str, consumer: Consumer, credential: Credential) -> None:
        self.stored = stored
        self.consumer = consumer
        self.credential = credential
        # what the cache key binds a password to: this credential and this very hash
        self.salt = hashlib.sha256(f"{credential.id}\0{stored}\0".encode()).digest()


class BasicAuth(Plugin):
    name = "basic-auth"
    priority = 1100
    Config = BasicAuthConfig

    def __init__(self, config: BasicAuthConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.anonymous_consumer = identity.resolve_anonymous(env, config.anonymous)
        self.www_authenticate = f'Basic realm="{config.realm}"'
        self.users: dict[str, _Entry] = {}
        for cred in env.basicauth:
            if cred.username in self.users:
                log.warning("basic-auth: credential %s repeats user name of another one, skipped", cred.id)
                continue
            self.users[cred.username] = _Entry(cred.password, cred.consumer,
                                               Credential(cred.id, cred.username, "basic-auth"))
        policies = Counter(p for p in (_policy_of(e.stored) for e in self.users.values()) if p is not None)
        self.dummy_policy = policies.most_common(1)[0][0] if policies else DEFAULT_POLICY
        self.cache: OrderedDict[bytes, float] = OrderedDict()  # cache key -> expiry (clock time)
        self.cache_ttl = CACHE_TTL
        self.cache_size = CACHE_SIZE
        self.clock: Callable[[], float] = time.monotonic
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}

    def carry_over(self, old: Plugin) -> None:
        if isinstance(old, BasicAuth):
            self.cache = old.cache  # keys bind the stored hash, so changed credentials cannot hit old entries

    def _fail(self, ctx: Ctx, message: str) -> Reply | None:
        if self.anonymous_consumer is not None:
            identity.anonymous(ctx, self.anonymous_consumer)
            return None
        return Reply.error_(401, message, [("WWW-Authenticate", self.www_authenticate)])

    def access(self, ctx: Ctx) -> Reply | None | Awaitable[Reply | None]:
        if identity.skip(ctx, self.anonymous_consumer):
            return None
        headers = ctx.headers
        proxy_value = headers.get("proxy-authorization")
        auth_value = headers.get("authorization")
        if proxy_value is None and auth_value is None:
            return self._fail(ctx, UNAUTHORIZED)
        if self.config.hide_credentials:
            headers.remove("proxy-authorization")
            headers.remove("authorization")
        entry: _Entry | None = None
        password: str | None = None
        for value in (proxy_value, auth_value):
            parsed = parse_basic(value) if value is not None else None
            if parsed is None:
                continue
            user, given = parsed
            entry = self.users.get(user)
            if entry is not None:
                password = given
                break
            if password is None:
                password = given
        if password is None:  # no header we could read: nothing to hash
            return self._fail(ctx, INVALID)
        if entry is None:
            return self._unknown_user(ctx, password)
        key = hashlib.sha256(entry.salt + password.encode()).digest()
        expiry = self.cache.get(key)
        if expiry is not None:
            if expiry > self.clock():
                self.cache.move_to_end(key)
                identity.authenticated(ctx, entry.consumer, entry.credential)
                return None
            del self.cache[key]
        return self._check(ctx, entry, password, key)

    async def _check(self, ctx: Ctx, entry: _Entry, password: str, key: bytes) -> Reply | None:
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().run_in_executor(_hash_pool(), verify_password, entry.stored, password)
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        ok = await asyncio.shield(fut)  # a cancelled request does not cancel the check others wait for
        if not ok:
            return self._fail(ctx, INVALID)
        self._remember(key)
        identity.authenticated(ctx, entry.consumer, entry.credential)
        return None

    async def _unknown_user(self, ctx: Ctx, password: str) -> Reply | None:
        await asyncio.get_running_loop().run_in_executor(_hash_pool(), dummy_verify, password, self.dummy_policy)
        return self._fail(ctx, INVALID)

    def _remember(self, key: bytes) -> None:
        cache = self.cache
        cache[key] = self.clock() + self.cache_ttl
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
