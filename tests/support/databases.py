"""Throwaway SQL databases for store tests: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def postgres_server_url() -> str:
    """The server the tests use: TEST_POSTGRES_URL if set, else the local default."""
    return os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


@contextmanager
def sqlite_url(tmp_dir: Path) -> Iterator[str]:
    """A SQLite file in `tmp_dir` (the directory's owner cleans it up)."""
    yield f"sqlite+aiosqlite:///{tmp_dir / 'store.db'}"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """Creates `sse_relay_t_<hex>` on the test server, yields its URL, drops it afterwards.

    Raises (never skips) when the server does not answer: these tests need a real PostgreSQL.
    """
    server = make_url(postgres_server_url())
    name = f"sse_relay_t_{secrets.token_hex(6)}"
    # CREATE/DROP DATABASE cannot run inside a transaction.
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 10})
    try:
        async with _connect(admin, server.render_as_string()) as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            async with _connect(admin, server.render_as_string()) as connection:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@asynccontextmanager
async def _connect(engine: AsyncEngine, shown_url: str) -> AsyncIterator[AsyncConnection]:
    try:
        connection = await engine.connect()
    except (OSError, DBAPIError, TimeoutError) as exc:
        raise RuntimeError(
            f"PostgreSQL is required for these tests at {shown_url} "
            f"(set TEST_POSTGRES_URL to use another server): {type(exc).__name__}: {exc}"
        ) from exc
    try:
        yield connection
    finally:
        await connection.close()


async def allow_connections(database_url: str, allowed: bool) -> None:
    """A PostgreSQL database made unavailable (its connections cut, new ones refused) or available again."""
    database = make_url(database_url).database
    admin = create_async_engine(
        make_url(postgres_server_url()), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"timeout": 10}
    )
    try:
        async with _connect(admin, postgres_server_url()) as connection:
            flag = "true" if allowed else "false"
            await connection.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {flag}'))
            if not allowed:
                await connection.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                    {"name": database},
                )
    finally:
        await admin.dispose()
