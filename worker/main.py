"""Worker settings and hooks (run by `sse-relay worker`, cli/worker.py): process start-up, shutdown, periodic sweeps."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, cast

import uvloop
from arq import cron
from arq.connections import RedisSettings
from arq.worker import func, get_kwargs

from shared import tracing
from shared.config import get_settings
from shared.hooks import HookThreads, load_registry
from shared.jobs import JOB_FUNCTION
from shared.keys import wake_key, worker_health_key
from shared.logging import configure_logging
from shared.redis_client import streams_client
from shared.state import Generations
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore
from worker import metrics
from worker.completion import run_on_complete
from worker.deps import Deps
from worker.job import run_generation
from worker.lease import Leases
from worker.reaper import reap
from worker.relay import RelayWorker
from worker.upstream import make_client
from worker.webhooks import Deliverer

if TYPE_CHECKING:
    from arq.typing import WorkerSettingsType

# uvicorn runs the API on uvloop; the worker gets the same loop (arq would use the default one).
uvloop.install()

log = logging.getLogger("sse_relay.worker")
_settings = get_settings()
# The job ends itself at JOB_TIMEOUT_S (worker/job.py); arq's timeout, which deletes the job, is only a backstop.
_ARQ_TIMEOUT_MARGIN_S = 30


async def startup(ctx: dict[str, Any]) -> None:
    """One AsyncOpenAI client, one streams pool and one database engine per process, made inside the loop."""
    configure_logging(_settings)
    tracing.setup("sse-relay-worker")
    engine = make_engine(_settings.database_url)
    if _settings.auto_migrate:
        await upgrade(engine)
    redis = streams_client(_settings)
    leases = ctx["leases"] = Leases(ctx["redis"], _settings.job_lease_s)
    leases.start()
    ctx["metrics"] = metrics.start(_settings, ctx["redis"], leases.count)
    generations = Generations(redis, _settings, direct_publish=True)
    store = ResultStore(engine)
    ctx["deps"] = Deps(
        settings=_settings,
        generations=generations,
        client=make_client(_settings),
        store=store,
        hooks=load_registry(_settings.hook_modules, _settings.hooks),
        hook_threads=HookThreads(_settings.hook_threads),
        leases=leases,
        webhooks=_start_webhooks(store, generations),
    )
    log.info(
        "worker ready: model=%s base_url=%s max_jobs=%d hooks=%d webhooks=%d",
        _settings.ai_model_name,
        _settings.openai_base_url or "(SDK default)",
        _settings.worker_max_jobs,
        len(ctx["deps"].hooks.hooks),
        len(_settings.webhook_urls),
    )


def _start_webhooks(store: ResultStore, generations: Generations) -> Deliverer | None:
    """The delivery loop, when endpoints are configured (pending rows of other workers are sent here too)."""
    if not _settings.webhook_urls:
        return None
    deliverer = Deliverer(_settings, store.deliveries, store, generations)
    deliverer.start()
    return deliverer


async def shutdown(ctx: dict[str, Any]) -> None:
    if "metrics" in ctx:
        await ctx["metrics"].stop()
    deps: Deps | None = ctx.get("deps")
    if deps is None:
        return
    await deps.leases.stop()
    if deps.webhooks is not None:
        await deps.webhooks.stop()
    await deps.client.close()
    await deps.generations.aclose()
    await deps.store.engine.dispose()
    deps.hook_threads.shutdown()
    tracing.shutdown()


async def job_end(ctx: dict[str, Any]) -> None:
    """Before arq's finish_job deletes the in-progress key, so that no renewal brings it back afterwards."""
    ctx["leases"].discard(ctx["job_id"])


async def sweep(ctx: dict[str, Any]) -> dict[str, int]:
    """Every few minutes: hooks still owed (a worker died mid-hook), and results past their retention."""
    deps: Deps = ctx["deps"]
    lease = timedelta(seconds=deps.settings.hook_timeout_s * 2)
    due = await deps.store.hooks_due(deps.settings.hook_max_attempts, lease)
    for generation_id in due:
        if await _terminal_published(deps, generation_id):
            await run_on_complete(deps, generation_id)
    purged = await deps.store.purge(timedelta(days=deps.settings.result_retention_days))
    return {"hooks": len(due), "purged": purged}


async def _terminal_published(deps: Deps, generation_id: str) -> bool:
    """A record whose attempt died before publishing its terminal event is not final yet: the retried
    attempt will replace it. Once Redis has forgotten the generation, the stored record is all there is."""
    state = await deps.generations.get(generation_id)
    if state is None:
        return True
    record = await deps.store.get(generation_id)
    return record is not None and state.terminal_id == record.terminal_event_id


async def reap_lost(ctx: dict[str, Any]) -> dict[str, int]:
    """Every minute: generations whose arq job is gone are ended (worker/reaper.py)."""
    reaped = await reap(ctx["deps"], ctx["redis"])
    return {"ended": reaped.ended, "recorded": reaped.recorded}


class WorkerSettings:
    """arq settings, all derived from the environment (shared.config)."""

    functions: ClassVar[list[Any]] = [
        # One extra arq try: the job itself ends a generation whose workers kept dying with `worker_lost`.
        func(
            run_generation,
            name=JOB_FUNCTION,
            timeout=_settings.job_timeout_s + _ARQ_TIMEOUT_MARGIN_S,
            max_tries=_settings.job_max_tries + 1,
        )
    ]
    cron_jobs: ClassVar[list[Any]] = [
        cron(sweep, minute=set(range(0, 60, 5)), run_at_startup=False, unique=True),
        cron(reap_lost, second=30, run_at_startup=False, unique=True),
    ]
    on_startup = startup
    on_shutdown = shutdown
    on_job_end = job_end
    # A worker started while Redis is away waits for it (a minute) instead of exiting after arq's 5 s.
    redis_settings = RedisSettings.from_dsn(_settings.redis_url)
    redis_settings.conn_retries = 60
    queue_name = _settings.queue_name
    health_check_key = worker_health_key(_settings.key_prefix)
    # `sse-relay worker --check` trusts this key, which lives one interval + 1 s: arq's default interval (an
    # hour) would report a dead worker healthy for an hour. One SET per 15 s is nothing for Redis.
    health_check_interval = 15
    # LLM calls are I/O-bound: one process holds hundreds of concurrent generations.
    max_jobs = _settings.worker_max_jobs
    job_timeout = _settings.job_timeout_s + _ARQ_TIMEOUT_MARGIN_S
    max_tries = _settings.job_max_tries + 1
    poll_delay = _settings.worker_poll_delay_s
    keep_result = 300
    # SIGTERM: give running generations time to finish before arq cancels and re-queues them.
    job_completion_wait = int(_settings.worker_shutdown_grace_s)


def relay_worker() -> RelayWorker:
    """The worker `sse-relay worker` runs: these settings, built into the subclass the way arq's run_worker does."""
    kwargs: dict[str, Any] = get_kwargs(settings_type())
    return RelayWorker(wake_key=wake_key(_settings.key_prefix), **kwargs)


def settings_type() -> WorkerSettingsType:
    # arq's protocol for a settings class declares instance attributes; this one's are class attributes.
    return cast("WorkerSettingsType", WorkerSettings)
