"""A job run again after its lease lapsed finds its generation ended and the hook claimed by the dead worker:
it takes the claim over once that hook's timeout is surely over, and runs on_complete once (SQLite store)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from shared.config import Settings
from shared.hooks import GenerationInfo, HookRegistry, HookThreads
from shared.store.db import make_engine
from shared.store.migrate import upgrade
from shared.store.repository import ResultStore
from tests.integration.test_store import final
from worker.completion import run_on_complete
from worker.deps import Deps


async def test_a_rerun_takes_over_a_dead_workers_hook_claim_after_its_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await upgrade(engine)
    store = ResultStore(engine)
    ran: list[str] = []

    def notify(text: str, generation: GenerationInfo) -> None:
        ran.append(generation.id)

    settings = Settings(hook_timeout_s=0.2, hook_max_attempts=3)
    deps = cast(
        Deps,
        cast(
            Any,
            type(
                "D",
                (),
                {
                    "settings": settings,
                    "store": store,
                    "hooks": HookRegistry({"notify": notify}),
                    "hook_threads": HookThreads(2),
                },
            )(),
        ),
    )
    try:
        result = final()
        await store.save(result)
        # The worker that finished the generation claimed its hook, then died.
        assert await store.claim_hook(result.id, settings.hook_max_attempts, timedelta(seconds=60)) == 1

        await run_on_complete(deps, result.id)  # an ordinary call: the claim is too young to take over
        assert ran == []
        await run_on_complete(deps, result.id, after_lapse=True)  # waits out HOOK_TIMEOUT_S + margin
        await run_on_complete(deps, result.id, after_lapse=True)  # and never runs it twice

        assert ran == [result.id]
        record = await store.get(result.id)
        assert record is not None
        assert (record.hook_status, record.hook_attempts) == ("ok", 2)
    finally:
        await engine.dispose()
