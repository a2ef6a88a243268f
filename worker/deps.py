"""What a job needs from its worker process, built once at start-up (worker.main)."""

from __future__ import annotations

from dataclasses import dataclass, field

import openai

from shared.config import Settings
from shared.hooks import HookRegistry, HookThreads
from shared.state import Generations
from shared.store.repository import ResultStore
from worker.early import EarlyStarts
from worker.lease import Leases
from worker.webhooks import Deliverer


@dataclass(slots=True)
class Deps:
    settings: Settings
    generations: Generations
    client: openai.AsyncOpenAI
    store: ResultStore
    hooks: HookRegistry
    hook_threads: HookThreads
    leases: Leases
    webhooks: Deliverer | None = None  # None when WEBHOOK_URLS is empty
    early: EarlyStarts = field(default_factory=EarlyStarts)

    def webhooks_written(self) -> None:
        """An ending with deliveries due now was stored: the delivery loop looks at once."""
        if self.webhooks is not None:
            self.webhooks.nudge()

    def webhooks_published(self, generation_id: str) -> None:
        """This worker published the ending: its deliveries go out now."""
        if self.webhooks is not None:
            self.webhooks.published(generation_id)
