"""A worker's dependencies built in-process (real Redis, real store), for tests that run a job or the reaper
directly instead of through a worker process."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shared.config import Settings
from shared.hooks import HookRegistry, HookThreads
from shared.redis_client import streams_client
from shared.state import Generations
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore
from worker.deps import Deps
from worker.lease import Leases
from worker.upstream import make_client


@asynccontextmanager
async def worker_deps(
    redis_url: str, database_url: str, key_prefix: str | None = None, **settings: Any
) -> AsyncIterator[Deps]:
    config = Settings(
        redis_url=redis_url,
        key_prefix=key_prefix or "j" + uuid.uuid4().hex[:8],
        database_url=database_url,
        openai_base_url="http://127.0.0.1:9/v1",  # never reached: these jobs end before the provider call
        **settings,
    )
    engine = make_engine(database_url)
    await upgrade(engine)
    redis = streams_client(config)
    deps = Deps(
        settings=config,
        generations=Generations(redis, config),
        client=make_client(config),
        store=ResultStore(engine),
        hooks=HookRegistry({}),
        hook_threads=HookThreads(2),
        leases=Leases(redis, config.job_lease_s),  # type: ignore[arg-type]
    )
    try:
        yield deps
    finally:
        await deps.client.close()
        await redis.aclose()
        await engine.dispose()
