"""Where the OpenAI formats read a generation: its Redis stream from the start through the API's stream hub (no
connection per client), or its durable record once the stream has expired; as continuity outputs."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

from api.compat.continuity import Continuity, End, Output
from api.deps import Services
from api.sse import START, replay_plan, stored_entries
from shared import events
from shared.errors import ErrorCode
from shared.state import GenerationState
from shared.store.models import GenerationRecord
from shared.streams import Entry, Folded, fold, follow, is_terminal


async def entries(services: Services, generation_id: str, state: GenerationState | None) -> AsyncIterator[list[Entry]]:
    """Every entry of the generation, in order, ending with its terminal event.

    Redis first; if the generation leaves Redis before its terminal event was read (it expired), the record
    follows, behind a `reset`, so the continuity rule sends only what the client lacks.
    """
    keys = services.generations.keys(generation_id)
    if state is not None:
        first, after = await replay_plan(services.streams, keys.events, state, None)
        if first:
            yield first
        block_ms = services.settings.sse_read_block_ms
        batches = services.hub.follow(keys, after) if services.hub is not None else None
        async for batch in batches or follow(services.streams, keys.events, keys.state, after, block_ms):
            yield batch
            if is_terminal(batch[-1][1]):
                return
    record = await services.store.get(generation_id)
    if record is None:
        return
    yield _from_record(record, resumed=state is not None)


def _from_record(record: GenerationRecord, resumed: bool) -> list[Entry]:
    replay = stored_entries(record, None)
    if resumed:
        replay.insert(0, (START, events.reset(record.attempts, "replay_truncated")))
    return replay


async def outputs(
    services: Services, generation_id: str, state: GenerationState | None
) -> AsyncGenerator[Output, None]:
    """What a client of a no-reset format may be sent, ending with one `End` (an `internal` error if the
    generation vanished without a record, which only a Redis that lost its data can cause)."""
    continuity = Continuity()
    async for batch in entries(services, generation_id, state):
        for _, raw in batch:
            for output in continuity.feed(json.loads(raw)):
                yield output
                if isinstance(output, End):
                    return
    yield End(json.loads(events.error(ErrorCode.INTERNAL)))


async def final(services: Services, generation_id: str, state: GenerationState | None) -> Folded:
    """The generation's final text and terminal event, once it has ended (what a non-streaming answer holds)."""
    collected: list[Entry] = []
    async for batch in entries(services, generation_id, state):
        collected += batch
    folded = fold(collected)
    if folded.terminal is None:
        folded.terminal = json.loads(events.error(ErrorCode.INTERNAL))
    return folded
