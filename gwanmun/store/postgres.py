"""The cluster store: PostgreSQL through asyncpg, shared by every node.

Two connections per node: one for queries and commits (one at a time, behind a lock), one that only ``LISTEN``s on
``gwanmun_config``. A commit runs ``SELECT ... FOR UPDATE`` on the head row, inserts the version, moves the head and
``pg_notify``s the new version number, all in one transaction: the notification is delivered to every listening node
exactly when the version becomes visible. Every query has a timeout (``command_timeout``), so a database that stops
answering is noticed like one that closed the connection: ``StoreUnavailable``, and the node keeps serving what it has.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import migrations
from .base import CHANNEL, Build, OnVersion, SchemaError, Store, StoreUnavailable, Version, new_version, row_to_version
from .doc import canonical_json

_COLUMNS = "version, created_at, author, message, hash, parent, changes"
_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "postgresql://?"
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(Store):
    kind = "postgres"
    push = True

    def __init__(self, dsn: str, history_limit: int = 1000, connect_timeout: float = 2.0,
                 query_timeout: float = 5.0) -> None:
        super().__init__(history_limit)
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.query_timeout = query_timeout
        self.q: asyncpg.Connection | None = None  # queries and commits
        self.l: asyncpg.Connection | None = None  # LISTEN only
        self.lock = asyncio.Lock()
        self._cache: Version | None = None

    @property
    def describe(self) -> str:
        return f"postgres:{redact_dsn(self.dsn)}"

    @property
    def is_open(self) -> bool:
        return self.q is not None and not self.q.is_closed()

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=self.connect_timeout, command_timeout=self.query_timeout,
                                     server_settings={"application_name": "gwanmun"})

    async def open(self) -> None:
        if self.is_open:
            return
        try:
            self.q = await asyncio.wait_for(self._connect(), self.connect_timeout + 1)
        except _ERRORS as exc:
            self.q = None
            raise StoreUnavailable(_describe(exc)) from None

    async def close(self) -> None:
        for conn in (self.l, self.q):
            if conn is not None and not conn.is_closed():
                conn.terminate()  # never waits on a dead peer
        self.q = self.l = None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable | SchemaError:
        if isinstance(exc, asyncpg.UndefinedTableError):
            return SchemaError("the database has no gwanmun schema: run `gwanmun migrations up`")
        for conn in (self.q, self.l):
            if conn is not None and not conn.is_closed():
                conn.terminate()
        self.q = self.l = None
        return StoreUnavailable(_describe(exc))

    async def _conn(self) -> asyncpg.Connection:
        if not self.is_open:
            await self.open()
        assert self.q is not None
        return self.q

    # -- migrations -----------------------------------------------------------------------------------------------
    async def pending_migrations(self) -> list[str]:
        async with self.lock:
            try:
                conn = await self._conn()
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", migrations.TABLE)
                applied = set()
                if exists:
                    applied = {r[0] for r in await conn.fetch(f"SELECT name FROM {migrations.TABLE}")}
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        return [m.name for m in migrations.pending(applied)]

    async def migrate(self) -> list[str]:
        done: list[str] = []
        async with self.lock:
            try:
                conn = await self._conn()
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", migrations.LOCK_KEY)
                    await conn.execute(migrations.create_table("postgres"))
                    applied = {r[0] for r in await conn.fetch(f"SELECT name FROM {migrations.TABLE}")}
                    for m in migrations.pending(applied):
                        for statement in m.statements("postgres"):
                            await conn.execute(statement)
                        await conn.execute(f"INSERT INTO {migrations.TABLE} (name, applied_at) VALUES ($1, $2)",
                                           m.name, time.time())
                        done.append(m.name)
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        return done

    # -- reads ----------------------------------------------------------------------------------------------------
    async def head(self) -> int:
        async with self.lock:
            try:
                conn = await self._conn()
                value = await conn.fetchval("SELECT version FROM gwanmun_config_head WHERE id = 1")
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        return int(value or 0)

    async def get(self, version: int) -> Version | None:
        cached = self._cache
        if cached is not None and cached.version == version:
            return cached
        async with self.lock:
            try:
                conn = await self._conn()
                row = await conn.fetchrow(f"SELECT {_COLUMNS}, config FROM gwanmun_config_versions WHERE version = $1",
                                          version)
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        if row is None:
            return None
        v = row_to_version(tuple(row), True)
        if cached is None or v.version >= cached.version:
            self._cache = v
        return v

    async def history(self, limit: int = 100, before: int | None = None) -> list[Version]:
        async with self.lock:
            try:
                conn = await self._conn()
                rows = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM gwanmun_config_versions WHERE version < $1 ORDER BY version DESC LIMIT $2",
                    before if before is not None else 2**62, limit)
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        return [row_to_version(tuple(r), False) for r in rows]

    # -- writes ---------------------------------------------------------------------------------------------------
    async def commit(self, build: Build, author: str) -> Version | None:
        async with self.lock:
            try:
                conn = await self._conn()
                async with conn.transaction():
                    head_no = int(await conn.fetchval(
                        "SELECT version FROM gwanmun_config_head WHERE id = 1 FOR UPDATE") or 0)
                    head = None
                    if head_no:
                        cached = self._cache
                        if cached is not None and cached.version == head_no:
                            head = cached
                        else:
                            row = await conn.fetchrow(
                                f"SELECT {_COLUMNS}, config FROM gwanmun_config_versions WHERE version = $1", head_no)
                            head = row_to_version(tuple(row), True) if row is not None else None
                    result = await build(head)
                    if result is None:
                        return None
                    document, message = result
                    v = new_version(head, document, author, message)
                    await conn.execute(
                        f"INSERT INTO gwanmun_config_versions ({_COLUMNS}, config) "
                        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        v.version, v.created_at, v.author, v.message, v.hash, v.parent, json.dumps(v.changes),
                        canonical_json(document))
                    await conn.execute("UPDATE gwanmun_config_head SET version = $1 WHERE id = 1", v.version)
                    if self.history_limit:
                        await conn.execute("DELETE FROM gwanmun_config_versions WHERE version <= $1",
                                           v.version - self.history_limit)
                    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(v.version))
            except _ERRORS as exc:
                raise self._unavailable(exc) from None
        self._cache = v
        return v

    # -- push -----------------------------------------------------------------------------------------------------
    async def listen(self, on_version: OnVersion, on_lost: Callable[[], None]) -> bool:
        if self.l is not None and not self.l.is_closed():
            return True

        def notified(_conn, _pid, _channel, payload: str) -> None:
            try:
                on_version(int(payload))
            except ValueError:
                pass

        try:
            conn = await asyncio.wait_for(self._connect(), self.connect_timeout + 1)
            await conn.add_listener(CHANNEL, notified)
        except _ERRORS as exc:
            raise self._unavailable(exc) from None
        conn.add_termination_listener(lambda _conn: on_lost())
        self.l = conn
        return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text
