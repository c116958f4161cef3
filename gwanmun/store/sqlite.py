"""The embedded store: one SQLite file, for a single node managed through the Admin API.

WAL journal (readers never wait for the writer), ``BEGIN IMMEDIATE`` for commits (one writer at a time, across
processes too: ``gwanmun config rollback`` on the same file while the node runs is safe), ``busy_timeout`` 5 s. The
calls are synchronous and fast (a local file); the node runs them on its control thread's loop. Other processes'
commits are seen by polling the head (``gateway.admin.poll_interval``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

from . import migrations
from .base import Build, SchemaError, Store, StoreUnavailable, Version, new_version, row_to_version
from .doc import canonical_json

_COLUMNS = "version, created_at, author, message, hash, parent, changes"


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, path: str, history_limit: int = 1000) -> None:
        super().__init__(history_limit)
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self._cache: Version | None = None  # the newest version read, with its document
        self._writing: asyncio.Lock | None = None  # one commit at a time on this connection

    @property
    def describe(self) -> str:
        return f"sqlite:{self.path}"

    @property
    def is_open(self) -> bool:
        return self.conn is not None

    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
        if self.conn is not None:
            return
        try:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None
        self.conn = conn

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            self.open_sync()
        assert self.conn is not None
        return self.conn

    # -- migrations -----------------------------------------------------------------------------------------------
    def _applied(self) -> set[str]:
        db = self._db()
        db.execute(migrations.create_table("sqlite"))
        return {r[0] for r in db.execute(f"SELECT name FROM {migrations.TABLE}")}

    async def pending_migrations(self) -> list[str]:
        try:
            return [m.name for m in migrations.pending(self._applied())]
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from None

    async def migrate(self) -> list[str]:
        db = self._db()
        done: list[str] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                applied = self._applied()
                for m in migrations.pending(applied):
                    for statement in m.statements("sqlite"):
                        db.execute(statement)
                    db.execute(f"INSERT INTO {migrations.TABLE} (name, applied_at) VALUES (?, ?)", (m.name, time.time()))
                    done.append(m.name)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"migration failed: {exc}") from None
        return done

    # -- reads ----------------------------------------------------------------------------------------------------
    def _check(self, exc: sqlite3.Error) -> StoreUnavailable | SchemaError:
        if "no such table" in str(exc):
            return SchemaError(f"{self.path} has no gwanmun schema: run `gwanmun migrations up`")
        return StoreUnavailable(str(exc))

    async def head(self) -> int:
        try:
            row = self._db().execute("SELECT version FROM gwanmun_config_head WHERE id = 1").fetchone()
        except sqlite3.Error as exc:
            raise self._check(exc) from None
        return int(row[0]) if row else 0

    async def get(self, version: int) -> Version | None:
        cached = self._cache
        if cached is not None and cached.version == version:
            return cached
        try:
            row = self._db().execute(f"SELECT {_COLUMNS}, config FROM gwanmun_config_versions WHERE version = ?",
                                     (version,)).fetchone()
        except sqlite3.Error as exc:
            raise self._check(exc) from None
        if row is None:
            return None
        v = row_to_version(row, True)
        if cached is None or v.version >= cached.version:
            self._cache = v
        return v

    async def history(self, limit: int = 100, before: int | None = None) -> list[Version]:
        try:
            rows = self._db().execute(
                f"SELECT {_COLUMNS} FROM gwanmun_config_versions WHERE version < ? ORDER BY version DESC LIMIT ?",
                (before if before is not None else 2**62, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._check(exc) from None
        return [row_to_version(r, False) for r in rows]

    # -- writes ---------------------------------------------------------------------------------------------------
    async def commit(self, build: Build, author: str) -> Version | None:
        if self._writing is None:
            self._writing = asyncio.Lock()
        async with self._writing:
            return await self._commit(build, author)

    async def _commit(self, build: Build, author: str) -> Version | None:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._check(exc) from None
        try:
            row = db.execute("SELECT version FROM gwanmun_config_head WHERE id = 1").fetchone()
            head_no = int(row[0]) if row else 0
            head = await self.get(head_no) if head_no else None
            result = await build(head)
            if result is None:
                db.execute("ROLLBACK")
                return None
            document, message = result
            v = new_version(head, document, author, message)
            db.execute(
                f"INSERT INTO gwanmun_config_versions ({_COLUMNS}, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (v.version, v.created_at, v.author, v.message, v.hash, v.parent, json.dumps(v.changes),
                 canonical_json(document)))
            db.execute("UPDATE gwanmun_config_head SET version = ? WHERE id = 1", (v.version,))
            if self.history_limit:
                db.execute("DELETE FROM gwanmun_config_versions WHERE version <= ?", (v.version - self.history_limit,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise self._check(exc) from None
        except BaseException:
            _rollback(db)
            raise
        self._cache = v
        return v


def _rollback(db: sqlite3.Connection) -> None:
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
