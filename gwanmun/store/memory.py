"""The DB-less store: versions kept in memory for the life of the process (the config file is the durable copy).

Versions come from the config file (each change of it) and from ``POST /config``; the history endpoints work on them
until the node restarts. Thread-safe: the supervisor's thread records file versions while the control thread serves.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import Build, Store, Version, new_version


class MemoryStore(Store):
    kind = "memory"

    def __init__(self, history_limit: int = 1000) -> None:
        super().__init__(history_limit)
        self.versions: list[Version] = []
        self.lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return True

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def migrate(self) -> list[str]:
        return []

    async def pending_migrations(self) -> list[str]:
        return []

    async def head(self) -> int:
        with self.lock:
            return self.versions[-1].version if self.versions else 0

    async def get(self, version: int) -> Version | None:
        with self.lock:
            for v in self.versions:
                if v.version == version:
                    return v
        return None

    async def history(self, limit: int = 100, before: int | None = None) -> list[Version]:
        with self.lock:
            items = [v for v in reversed(self.versions) if before is None or v.version < before]
        return [Version(**{**v.__dict__, "doc": None}) for v in items[:limit]]

    def commit_sync(self, document: dict[str, Any], author: str, message: str) -> Version:
        with self.lock:
            head = self.versions[-1] if self.versions else None
            v = new_version(head, document, author, message)
            self._append(v)
            return v

    def _append(self, v: Version) -> None:
        self.versions.append(v)
        if self.history_limit and len(self.versions) > self.history_limit:
            del self.versions[: len(self.versions) - self.history_limit]

    async def commit(self, build: Build, author: str) -> Version | None:
        # the control thread is the only async writer; the file path (commit_sync) never awaits
        head = self.versions[-1] if self.versions else None
        result = await build(head)
        if result is None:
            return None
        document, message = result
        with self.lock:
            head = self.versions[-1] if self.versions else None
            v = new_version(head, document, author, message)
            self._append(v)
        return v
