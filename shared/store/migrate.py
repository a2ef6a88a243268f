"""Schema migrations (Alembic), applied by `sse-relay migrate` or by each process at start-up."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.store.db import make_engine

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed number: PostgreSQL advisory lock so concurrent start-ups migrate one at a time.
_LOCK_ID = 0x55E2E1A7


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(_config(connection), "head")


def sqlite_lock_path(url: URL) -> Path | None:
    """The lock file beside a SQLite database file; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(f"{url.database}-migrate.lock")


@asynccontextmanager
async def _sqlite_migration_lock(url: URL) -> AsyncIterator[None]:
    """Held by one process at a time across the whole migration transaction.

    SQLite has no advisory lock, and its driver runs DDL outside the transaction that reads alembic_version:
    processes started together (API and workers on a new file) would all see an empty database and all
    create the tables, and every one but the first would exit. With the lock, the others wait, then find the
    schema at head and do nothing.
    """
    path = sqlite_lock_path(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # Blocking flock in a thread: the event loop keeps serving while another process migrates.
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield  # the kernel releases the lock when fd closes, also when the process dies
    finally:
        os.close(fd)


async def upgrade(engine: AsyncEngine) -> None:
    async with _sqlite_migration_lock(engine.url), engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def upgrade_url(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


def main(url: str) -> None:
    asyncio.run(upgrade_url(url))
