"""Where the Admin API keeps the config: versions of one canonical document (see ``doc`` and ``base``).

Stores: ``SqliteStore`` (embedded, one node), ``PostgresStore`` (a cluster; LISTEN/NOTIFY), ``MemoryStore`` (DB-less:
the config file is the durable copy). ``LastKnownGood`` is each node's own copy of what it last served.
"""

from __future__ import annotations

import os

from .base import SchemaError, Store, StoreError, StoreUnavailable, Version
from .cache import LastKnownGood

__all__ = [
    "LastKnownGood", "SchemaError", "Store", "StoreError", "StoreUnavailable", "Version", "cache_path", "make_store",
    "sqlite_path",
]


def _beside(config_path: str, value: str | None, suffix: str) -> str:
    base = os.path.dirname(os.path.abspath(config_path))
    if value:
        return value if os.path.isabs(value) else os.path.join(base, value)
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(base, stem + suffix)


def sqlite_path(settings, config_path: str) -> str:
    """``admin.sqlite_path`` (relative: to the config file's folder), default ``<config>.sqlite3`` beside it."""
    return _beside(config_path, settings.sqlite_path, ".sqlite3")


def cache_path(settings, config_path: str) -> str:
    """``admin.cache_file`` (relative: to the config file's folder), default ``<config>.lkg.json`` beside it."""
    return _beside(config_path, settings.cache_file, ".lkg.json")


def make_store(settings, config_path: str) -> Store:
    """The store ``gateway.admin`` names (``settings``: an ``AdminSettings``)."""
    if settings.database == "postgres":
        from .postgres import PostgresStore

        return PostgresStore(settings.postgres_dsn, settings.history_limit, settings.connect_timeout)
    if settings.database == "sqlite":
        from .sqlite import SqliteStore

        return SqliteStore(sqlite_path(settings, config_path), settings.history_limit)
    from .memory import MemoryStore

    return MemoryStore(settings.history_limit)
