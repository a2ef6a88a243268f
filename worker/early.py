"""Provider requests sent when a job is taken (worker/pickup.py), read when its generation streams (worker/job.py).

Between the take and the generation's first line, arq fetches the job (a MULTI round trip), logs it and starts
its task: about a millisecond in which the provider request can already be on its way. A request that is not
read after all (arq did not run the job, or it ended before streaming) is cancelled or closed when the job's
task ends (worker/relay.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

import openai

from shared.jobs import StoredRequest
from worker.body import Opened
from worker.upstream import open_stream, release


class _Sent(NamedTuple):
    opening: asyncio.Task[Opened]
    at_ns: int  # when it went out (epoch ns): the job's and the provider call's spans start there


class EarlyStarts:
    """One worker's requests sent ahead of their jobs, by generation id."""

    def __init__(self) -> None:
        self._pending: dict[str, _Sent] = {}

    def start(self, generation_id: str, client: openai.AsyncOpenAI, request: StoredRequest) -> None:
        self.discard(generation_id)
        self._pending[generation_id] = _Sent(asyncio.ensure_future(open_stream(client, request)), time.time_ns())

    def sent_at(self, generation_id: str) -> int | None:
        """When this generation's request was sent, while it is pending; None if there is none."""
        sent = self._pending.get(generation_id)
        return sent.at_ns if sent is not None else None

    def take(self, generation_id: str) -> asyncio.Task[Opened] | None:
        """The request sent for this generation, now the caller's to read and close; None if there is none."""
        sent = self._pending.pop(generation_id, None)
        return sent.opening if sent is not None else None

    def discard(self, generation_id: str) -> None:
        sent = self._pending.pop(generation_id, None)
        if sent is not None:
            release(sent.opening)
