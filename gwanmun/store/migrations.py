"""Schema migrations, one list for both SQL dialects (SQLite and PostgreSQL), applied in order, each once.

``gwanmun_schema_migrations`` records what has been applied. On PostgreSQL the whole run holds a transaction-level
advisory lock, so nodes (or operators) running ``gwanmun migrations up`` at once apply each migration once. A new
migration is appended here with the next number; one that has shipped is never edited.
"""

from __future__ import annotations

from dataclasses import dataclass

TABLE = "gwanmun_schema_migrations"
LOCK_KEY = 0x67776E6D  # "gwnm": pg_advisory_xact_lock key


@dataclass(frozen=True)
class Migration:
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "001_config_versions",
        sqlite=(
            """CREATE TABLE gwanmun_config_versions (
                 version INTEGER PRIMARY KEY, created_at REAL NOT NULL, author TEXT NOT NULL, message TEXT NOT NULL,
                 hash TEXT NOT NULL, parent INTEGER, changes TEXT NOT NULL, config TEXT NOT NULL)""",
            "CREATE TABLE gwanmun_config_head (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)",
            "INSERT INTO gwanmun_config_head (id, version) VALUES (1, 0)",
        ),
        postgres=(
            """CREATE TABLE gwanmun_config_versions (
                 version BIGINT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, author TEXT NOT NULL,
                 message TEXT NOT NULL, hash TEXT NOT NULL, parent BIGINT, changes TEXT NOT NULL, config TEXT NOT NULL)""",
            "CREATE TABLE gwanmun_config_head (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)",
            "INSERT INTO gwanmun_config_head (id, version) VALUES (1, 0)",
        ),
    ),
    Migration(
        "002_store_meta",
        sqlite=(
            "CREATE TABLE gwanmun_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO gwanmun_meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))))",
        ),
        postgres=(
            "CREATE TABLE gwanmun_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO gwanmun_meta (key, value) VALUES ('store_id', md5(random()::text || clock_timestamp()::text))",
        ),
    ),
)

NAMES = tuple(m.name for m in MIGRATIONS)


def create_table(dialect: str) -> str:
    applied = "DOUBLE PRECISION" if dialect == "postgres" else "REAL"
    return f"CREATE TABLE IF NOT EXISTS {TABLE} (name TEXT PRIMARY KEY, applied_at {applied} NOT NULL)"


def pending(applied: set[str]) -> list[Migration]:
    return [m for m in MIGRATIONS if m.name not in applied]
