"""Redis stream -> SSE: decides the resume point (204/400/reset) and encodes entries as `id:` + `data:` frames."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent

from api import metrics
from api.errors import ApiError
from api.stream_hub import StreamHub
from shared import events
from shared.config import Settings
from shared.errors import error_code_of
from shared.ids import format_stream_id, parse_stream_id, previous_stream_id
from shared.keys import GenerationKeys
from shared.redis_client import StreamsRedis
from shared.state import GenerationState
from shared.store.models import GenerationRecord
from shared.streams import Entry, first_entry_id, follow

START = "0-0"


def resume_point(header: str | None, query: str | None) -> str | None:
    """Last-Event-ID header, else `last_event_id` query; 400 if it is not a stream id."""
    raw = header if header else query
    if not raw:
        return None
    parsed = parse_stream_id(raw.strip())
    if parsed is None:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be a stream id such as 1732512345678-0.")
    return format_stream_id(parsed)


def is_at_or_after(resume: str, terminal_id: str) -> bool:
    a, b = parse_stream_id(resume), parse_stream_id(terminal_id)
    return a is not None and b is not None and a >= b


async def replay_plan(
    redis: StreamsRedis, events_key: str, state: GenerationState, resume: str | None
) -> tuple[list[Entry], str]:
    """-> (synthetic entries to send first, id to read after).

    If entries the client has not seen were trimmed (MAXLEN), it gets a `reset` and what is left:
    never a silent gap. The reset is labelled with the id just before the oldest retained entry.
    """
    after = resume or START
    if state.first_id is None:
        return [], after
    oldest = await first_entry_id(redis, events_key)
    if oldest is None or oldest == state.first_id:
        return [], after
    oldest_parts = parse_stream_id(oldest)
    after_parts = parse_stream_id(after)
    if oldest_parts is None or after_parts is None or after_parts >= previous_stream_id(oldest_parts):
        return [], after
    label = format_stream_id(previous_stream_id(oldest_parts))
    return [(label, events.reset(state.attempt, "replay_truncated"))], label


def encode_entries(entries: list[Entry]) -> bytes:
    return "".join(f"id: {entry_id}\ndata: {raw}\n\n" for entry_id, raw in entries).encode()


async def frames(
    redis: StreamsRedis,
    keys: GenerationKeys,
    first: list[Entry],
    after: str,
    block_ms: int,
    hub: StreamHub | None,
    count_replay: bool = False,
) -> AsyncIterator[bytes]:
    """`count_replay`: an event request (not a create's own live stream), whose backlog counts as replayed."""
    if first:
        yield encode_entries(first)
    batches = hub.follow(keys, after) if hub is not None else follow(redis, keys.events, keys.state, after, block_ms)
    if count_replay:
        batches = metrics.count_replayed(batches)
    async for batch in batches:
        yield encode_entries(batch)


def sse_response(
    settings: Settings, body: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> EventSourceResponse:
    return EventSourceResponse(
        body,
        headers=headers,
        ping=settings.sse_ping_s,
        sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        send_timeout=settings.sse_send_timeout_s,
    )


def stored_entries(record: GenerationRecord, resume: str | None) -> list[Entry]:
    """A finished generation whose stream expired, as events: its text as one `content` event, then its
    terminal event under the original id (so a client resuming from that id still gets 204)."""
    terminal_at = parse_stream_id(record.terminal_event_id) or (0, 1)
    content_at = previous_stream_id(terminal_at)
    seen = parse_stream_id(resume) if resume else None
    entries: list[Entry] = []
    if seen is None or seen < content_at:
        if seen is not None:
            # The client holds part of the text; this replay sends all of it, so it must start over.
            entries.append(
                (format_stream_id(previous_stream_id(content_at)), events.reset(record.attempts, "replay_truncated"))
            )
        if record.text:
            entries.append((format_stream_id(content_at), events.content(record.text)))
    if record.status == "done":
        terminal = events.done(record.text, record.finish_reason, record.usage)
    else:
        terminal = events.error(error_code_of(record.error_code))
    entries.append((record.terminal_event_id, terminal))
    return entries


async def stored_frames(entries: list[Entry]) -> AsyncIterator[bytes]:
    yield encode_entries(entries)
