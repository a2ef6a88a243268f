"""Provider requests sent when a job is taken (worker/pickup.py), read when its generation streams (worker/job.py).

Between the take and the generation's first line, arq fetches the job (a MULTI round trip), logs it and starts
its task: about a millisecond in which the provider request can already be on its way. A request that is not
read after all (arq did not run the job, or it ended before streaming) is cancelled or closed when the job's
task ends (worker/relay.py).
"""

from __future__ import annotations

import asyncio
import time

import openai

from shared.jobs import StoredRequest
from worker.body import Opened
from worker.upstream import open_stream, release


class EarlyStarts:
    """One worker's requests sent ahead of their jobs, by generation id."""

    def __init__(self) -> None:
        self._pending: dict[str, asyncio.Task[Opened]] = {}
        # When each request went out (epoch ns): the job's and the provider call's spans start there.
        self._sent_ns: dict[str, int] = {}

    def start(self, generation_id: str, client: openai.AsyncOpenAI, request: StoredRequest) -> None:
        self.discard(generation_id)
        self._sent_ns[generation_id] = time.time_ns()
        self._pending[generation_id] = asyncio.ensure_future(open_stream(client, request))

    def sent_at(self, generation_id: str) -> int | None:
        """When this generation's request was sent, while it is pending; None if there is none."""
        return self._sent_ns.get(generation_id) if generation_id in self._pending else None

    def take(self, generation_id: str) -> asyncio.Task[Opened] | None:
        """The request sent for this generation, now the caller's to read and close; None if there is none."""
        self._sent_ns.pop(generation_id, None)
        return self._pending.pop(generation_id, None)

    def discard(self, generation_id: str) -> None:
        self._sent_ns.pop(generation_id, None)
        opening = self._pending.pop(generation_id, None)
        if opening is not None:
            release(opening)
