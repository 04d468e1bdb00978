"""Idempotent migrations: numbered SQL files applied once each, recorded in ``schema_migrations``."""

from __future__ import annotations

import logging
from importlib import resources

from streams.sink.backend import ClickHouseBackend

log = logging.getLogger(__name__)


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("streams.sink").joinpath("migrations")
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def migrate(backend: ClickHouseBackend) -> list[str]:
    """Apply the migrations not yet applied; return their names. Safe to run any number of times."""
    db = backend.database  # validated identifier (settings pattern); identifiers cannot be bound
    backend.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    backend.command(
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {int(row[0]) for row in backend.query(f"SELECT version FROM {db}.schema_migrations FINAL").rows}  # noqa: S608
    applied = []
    for version, name, sql in migration_files():
        if version in done:
            continue
        for statement in statements(sql):
            backend.command(statement.replace("{db}", db))
        backend.insert_json("schema_migrations", ["version", "name"], f'{{"version": {version}, "name": "{name}"}}\n'.encode())
        log.info("applied migration %s", name)
        applied.append(name)
    return applied
