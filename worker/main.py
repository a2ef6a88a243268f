"""Worker entry point (`arq worker.main.WorkerSettings`): process start-up, shutdown and arq settings."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from arq.connections import RedisSettings
from arq.worker import func

from shared.config import get_settings
from shared.jobs import JOB_FUNCTION
from shared.keys import worker_health_key
from shared.logging import configure_logging
from shared.redis_client import streams_client
from shared.state import Generations
from worker.job import Deps, run_generation
from worker.upstream import make_client

log = logging.getLogger("sse_relay.worker")
_settings = get_settings()


async def startup(ctx: dict[str, Any]) -> None:
    """One AsyncOpenAI client and one streams connection pool per worker process, made inside the loop."""
    configure_logging(_settings)
    redis = streams_client(_settings)
    ctx["streams_redis"] = redis
    ctx["deps"] = Deps(settings=_settings, generations=Generations(redis, _settings), client=make_client(_settings))
    log.info(
        "worker ready: model=%s base_url=%s max_jobs=%d",
        _settings.ai_model_name,
        _settings.openai_base_url or "(SDK default)",
        _settings.worker_max_jobs,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    deps: Deps | None = ctx.get("deps")
    if deps is not None:
        await deps.client.close()
    redis = ctx.get("streams_redis")
    if redis is not None:
        await redis.aclose()


class WorkerSettings:
    """arq settings, all derived from the environment (shared.config)."""

    functions: ClassVar[list[Any]] = [
        func(
            run_generation,
            name=JOB_FUNCTION,
            timeout=_settings.job_timeout_s,
            max_tries=_settings.job_max_tries,
        )
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_settings.redis_url)
    queue_name = _settings.queue_name
    health_check_key = worker_health_key(_settings.key_prefix)
    # LLM calls are I/O-bound: one process holds hundreds of concurrent generations.
    max_jobs = _settings.worker_max_jobs
    job_timeout = _settings.job_timeout_s
    max_tries = _settings.job_max_tries
    poll_delay = _settings.worker_poll_delay_s
    keep_result = 300
    # SIGTERM: give running generations time to finish before arq cancels and re-queues them.
    job_completion_wait = 50
