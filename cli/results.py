"""`sse-relay migrate` and `sse-relay purge`: operating the durable result store."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from shared.config import Settings
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def _migrate(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def _purge(settings: Settings, days: float) -> int:
    engine = make_engine(settings.database_url)
    try:
        return await ResultStore(engine).purge(timedelta(days=days))
    finally:
        await engine.dispose()


def migrate() -> int:
    settings = Settings()
    asyncio.run(_migrate(settings))
    print(f"[sse-relay] schema up to date at {_redact(settings.database_url)}")
    return 0


def purge(days: float | None) -> int:
    settings = Settings()
    keep = days if days is not None else settings.result_retention_days
    removed = asyncio.run(_purge(settings, keep))
    print(f"[sse-relay] removed {removed} results finished more than {keep:g} days ago")
    return 0
