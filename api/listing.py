"""GET /v1/generations: a caller's own generations, newest first, from the live Redis state and the store.

Queued and running generations exist only in Redis. Each caller already has a sorted set of its unfinished
generations (the concurrency limit's, `shared/keys.py:active_key`; bounded by MAX_CONCURRENT_PER_CALLER,
entries leave it when their generation ends and expire on their own); their state hashes are read in one
pipeline. Finished generations come from the store, one indexed query (owner, created_at). A generation is
released from the set only after its record is stored, so it is never missing from both; when it is in both,
the stored record wins. Pages are ordered by (created_at, id), so a generation that finishes between two
pages keeps its place; the cursor is that pair, base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta

from api.deps import Services
from api.errors import ApiError
from api.schemas import GenerationPage, GenerationSummary
from api.views import live_summary, stored_summary
from shared.ids import is_generation_id
from shared.keys import active_key
from shared.state import GenerationState, Status
from shared.store.repository import aware

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
Position = tuple[int, str]  # (created_at in microseconds since the epoch, id): the page order, newest first


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(f"{position[0]}:{position[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    try:
        created, _, generation_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        position = (int(created), generation_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        position = (0, "")
    if not is_generation_id(position[1]):
        raise ApiError(400, "invalid_cursor", "`after` must be the `next` cursor of a previous page.")
    return position


async def _live(services: Services, caller: str) -> list[GenerationState]:
    ids = [str(i) for i in await services.streams.zrange(active_key(services.settings.key_prefix, caller), 0, -1)]
    if not ids:
        return []
    async with services.streams.pipeline(transaction=False) as pipe:
        for generation_id in ids:
            pipe.hgetall(services.generations.keys(generation_id).state)
        raws = await pipe.execute()
    states = []
    for generation_id, raw in zip(ids, raws, strict=True):
        if raw and "status" in raw and "request" in raw and raw.get("owner") == caller:
            states.append(GenerationState.from_hash(generation_id, raw))
    return states


async def list_generations(
    services: Services, caller: str, status: Status | None, limit: int, after: str | None
) -> GenerationPage:
    before = decode_cursor(after) if after is not None else None
    found: dict[str, tuple[Position, GenerationSummary]] = {}
    for state in await _live(services, caller):
        position = (micros(datetime.fromtimestamp(state.created_at, UTC)), state.id)
        if (status is None or state.status == status) and (before is None or position < before):
            found[state.id] = (position, live_summary(state))
    stored_before = None if before is None else (_EPOCH + before[0] * _MICROSECOND, before[1])
    for record in await services.store.list_owned(caller, status, stored_before, limit + 1):
        created = aware(record.created_at)
        assert created is not None
        found[record.id] = ((micros(created), record.id), stored_summary(record))
    ordered = sorted(found.values(), key=lambda item: item[0], reverse=True)
    page = ordered[:limit]
    cursor = encode_cursor(page[-1][0]) if len(ordered) > limit else None
    return GenerationPage(items=[summary for _, summary in page], next=cursor)
