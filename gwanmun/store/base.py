"""What every store does: versions of the config document, committed one at a time.

A store keeps an append-only list of versions (1, 2, 3, ...) and a head (the newest). A version holds the whole flat
document (``gwanmun.store.doc``) as canonical JSON, who made it, when, why, its hash, the version it was made from
and the entity-level changes from that one. ``commit`` runs a caller's ``build(head)`` inside the store's write
transaction (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``SELECT ... FOR UPDATE`` on the head row), so two writers, on
one node or on several, never both build on the same head; whatever ``build`` raises (a 400 for an invalid change)
rolls the transaction back and nothing is stored.

Errors: ``StoreUnavailable`` (cannot connect, connection lost, timed out: the caller keeps serving what it has and
retries), ``SchemaError`` (the schema is older than this gwanmun: run ``gwanmun migrations up``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import doc as docs

CHANNEL = "gwanmun_config"  # PostgreSQL NOTIFY channel; the payload is the new version number


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    """The store cannot be reached now (connection refused or lost, timeout, database gone)."""


class SchemaError(StoreError):
    """The store's schema needs migrations (``gwanmun migrations up``)."""


@dataclass
class Version:
    version: int
    created_at: float
    author: str
    message: str
    hash: str
    parent: int | None
    changes: list[dict[str, Any]] = field(default_factory=list)
    doc: dict[str, Any] | None = None  # None in history listings

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at, "author": self.author,
                "message": self.message, "hash": self.hash, "parent": self.parent, "changes": self.changes}

    def to_json(self) -> dict[str, Any]:
        return {**self.meta(), "config": self.doc}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        return cls(int(data["version"]), float(data["created_at"]), str(data["author"]), str(data["message"]),
                   str(data["hash"]), data.get("parent"), list(data.get("changes") or []), data.get("config"))


def new_version(head: Version | None, doc: dict[str, Any], author: str, message: str) -> Version:
    return Version(
        version=(head.version if head else 0) + 1, created_at=round(time.time(), 3), author=author,
        message=message, hash=docs.doc_hash(doc), parent=head.version if head else None,
        changes=docs.changes(head.doc if head else None, doc), doc=doc,
    )


def row_to_version(row: Any, with_doc: bool) -> Version:
    """A row (version, created_at, author, message, hash, parent, changes[, config]) -> Version."""
    v = Version(int(row[0]), float(row[1]), row[2], row[3], row[4], row[5], json.loads(row[6]))
    if with_doc:
        v.doc = json.loads(row[7])
    return v


Build = Callable[[Version | None], Awaitable[tuple[dict[str, Any], str] | None]]
OnVersion = Callable[[int], None]


class Store:
    """The interface (see the module doc). ``kind``: "sqlite", "postgres" or "memory"."""

    kind = "?"
    push = False  # True when the store notifies other nodes of commits (PostgreSQL LISTEN/NOTIFY)

    def __init__(self, history_limit: int = 1000) -> None:
        self.history_limit = history_limit

    @property
    def describe(self) -> str:
        return self.kind

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        """Connect; raises ``StoreUnavailable``. Does not check the schema (``pending_migrations`` does)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns their names."""
        raise NotImplementedError

    async def pending_migrations(self) -> list[str]:
        raise NotImplementedError

    async def head(self) -> int:
        """The newest version number (0: none yet)."""
        raise NotImplementedError

    async def get(self, version: int) -> Version | None:
        raise NotImplementedError

    async def latest(self) -> Version | None:
        head = await self.head()
        return await self.get(head) if head else None

    async def history(self, limit: int = 100, before: int | None = None) -> list[Version]:
        """Versions newest first (without their documents), older than ``before`` if given."""
        raise NotImplementedError

    async def commit(self, build: Build, author: str) -> Version | None:
        """In one write transaction: ``build(head)`` -> (document, message), stored as the next version. ``build``
        returning None stores nothing (returns None); an exception from it rolls back and propagates."""
        raise NotImplementedError

    async def listen(self, on_version: OnVersion, on_lost: Callable[[], None]) -> bool:
        """Be told of other nodes' commits as they happen. False: this store cannot push (poll instead)."""
        return False
