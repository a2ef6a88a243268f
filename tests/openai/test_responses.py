"""The official openai SDK's Responses API against the relay: background mode, streaming with sequence numbers,
resume with `starting_after` (on another API instance, and from the stored record), retrieve and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from redis.asyncio import Redis

from cli.embedded_redis import free_port
from shared.keys import generation_keys
from tests.openai.conftest import sdk
from tests.support.metrics import scrape, value
from tests.support.stack import Stack, _get_ok, wait_for

TEXT = "Background text, resumed: 你好 🌍 — and a few more words to cut into pieces."


@pytest.fixture(scope="module")
def second_api(openai_stack: Stack) -> Iterator[str]:
    """Another API process on the same Redis and store: a client may resume on either."""
    port = free_port()
    args = ["-m", "uvicorn", "api.main:app", "--port", str(port), "--timeout-graceful-shutdown", "3"]
    process = openai_stack.start("api-2", args)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get_ok(f"{url}/readyz"), "the second API", process)
    yield url
    process.stop()


@pytest.fixture
async def other(openai_stack: Stack, second_api: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(openai_stack) as client:
        yield client.with_options(base_url=f"{second_api}/v1")


def text_of(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))


def held_at(events: list[ResponseStreamEvent], position: int) -> str:
    """The text a client holds once it got every event up to `position` (a delta's number is its last character)."""
    held = ""
    for event in events:
        if isinstance(event, ResponseTextDeltaEvent):
            first = event.sequence_number - len(event.delta) + 1
            held += event.delta[: max(0, position - first + 1)]
    return held


def structural(events: list[ResponseStreamEvent]) -> list[tuple[str, int]]:
    return [(e.type, e.sequence_number) for e in events if not isinstance(e, ResponseTextDeltaEvent)]


def numbers(events: list[ResponseStreamEvent]) -> list[int]:
    return [e.sequence_number for e in events]


async def test_background_stream_drop_and_resume_on_another_instance(
    client: openai.AsyncOpenAI, other: openai.AsyncOpenAI
) -> None:
    created = await client.responses.create(
        model="demo@chunk=3,delay_ms=20", input=f"echo:{TEXT}", background=True, metadata={"job": "nightly"}
    )
    assert created.status in ("queued", "in_progress") and created.background is True
    first: list[ResponseStreamEvent] = []
    stream = await client.responses.retrieve(created.id, stream=True)
    async for event in stream:
        first.append(event)
        if len([e for e in first if isinstance(e, ResponseTextDeltaEvent)]) == 3:
            break
    await stream.close()  # the connection drops; the generation goes on
    rest = [e async for e in await other.responses.retrieve(created.id, stream=True, starting_after=numbers(first)[-1])]
    events = first + rest
    assert isinstance(events[0], ResponseCreatedEvent) and isinstance(events[-1], ResponseCompletedEvent)
    assert text_of(events) == TEXT, "every character exactly once"
    assert numbers(events) == sorted(set(numbers(events))), "strictly increasing across the reconnect"
    done = events[-1]
    assert isinstance(done, ResponseCompletedEvent)
    assert (done.response.output_text, done.response.status) == (TEXT, "completed")
    assert done.response.usage is not None and done.response.usage.output_tokens > 0
    retrieved = await client.responses.retrieve(created.id)
    assert (retrieved.status, retrieved.output_text, retrieved.metadata) == ("completed", TEXT, {"job": "nightly"})


async def test_sequence_numbers_are_the_same_on_every_replay_and_from_the_stored_record(
    client: openai.AsyncOpenAI, openai_stack: Stack
) -> None:
    metrics_url = f"{openai_stack.api_url}/metrics"
    resumes = value(scrape(metrics_url), "sse_relay_resumes_total")
    created = await client.responses.create(model="demo@chunk=3,delay_ms=1", input=f"echo:{TEXT}", background=True)
    live = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    again = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    assert [e.model_dump() for e in again] == [e.model_dump() for e in live]
    # A resume in the middle of a delta gets the rest of that delta under the same number.
    delta = next(e for e in live if isinstance(e, ResponseTextDeltaEvent) and len(e.delta) > 1)
    resumed = [
        e
        async for e in await client.responses.retrieve(
            created.id, stream=True, starting_after=delta.sequence_number - 1
        )
    ]
    assert isinstance(resumed[0], ResponseTextDeltaEvent)
    assert (resumed[0].delta, resumed[0].sequence_number) == (delta.delta[-1], delta.sequence_number)
    # The Redis stream expires; the record serves the same text under the same numbers.
    redis = Redis.from_url(openai_stack.env["REDIS_URL"])
    keys = generation_keys(openai_stack.prefix, created.id)
    await redis.delete(keys.events, keys.state)
    await redis.aclose()
    stored = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    assert text_of(stored) == TEXT
    assert structural(stored) == structural(live)
    # A client that got the live events up to `position` (4 characters before the end of the text) resumes from
    # the record, whose text is one piece: it gets exactly the characters it lacks.
    position = live[-1].sequence_number - 8
    tail = [e async for e in await client.responses.retrieve(created.id, stream=True, starting_after=position)]
    assert held_at(live, position) + text_of(tail) == TEXT and len(text_of(tail)) == 4
    assert numbers(tail) and min(numbers(tail)) > position and numbers(tail)[-1] == live[-1].sequence_number
    assert (await client.responses.retrieve(created.id)).output_text == TEXT
    # The two retrieves with starting_after were resumes.
    assert value(scrape(metrics_url), "sse_relay_resumes_total") == resumes + 2


async def test_create_without_background_streams_or_answers_the_completed_response(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="demo@delay_ms=1", input=[{"role": "user", "content": "echo:direct"}], instructions="be brief"
    )
    assert (response.status, response.output_text, response.instructions) == ("completed", "direct", "be brief")
    events = [e async for e in await client.responses.create(model="demo@delay_ms=1", input="echo:live", stream=True)]
    assert text_of(events) == "live" and isinstance(events[-1], ResponseCompletedEvent)


async def test_max_output_tokens_ends_incomplete(client: openai.AsyncOpenAI) -> None:
    response = await client.responses.create(
        model="demo@chunk=2,delay_ms=1", input="echo:abcdefgh", max_output_tokens=2
    )
    assert (response.status, response.output_text) == ("incomplete", "abcd")
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


async def test_reasoning_arrives_as_reasoning_text_events(client: openai.AsyncOpenAI) -> None:
    events = [
        e async for e in await client.responses.create(model="reasoning@delay_ms=1", input="echo:ok", stream=True)
    ]
    reasoning = "".join(e.delta for e in events if isinstance(e, ResponseReasoningTextDeltaEvent))
    assert reasoning.startswith("Let me think") and text_of(events) == "ok"
    done = events[-1]
    assert isinstance(done, ResponseCompletedEvent)
    assert [item.type for item in done.response.output] == ["reasoning", "message"]


async def test_cancel_twice_answers_the_cancelled_response(client: openai.AsyncOpenAI) -> None:
    created = await client.responses.create(model="demo@chunk=1,delay_ms=50", input=f"echo:{TEXT}", background=True)
    stream = await client.responses.retrieve(created.id, stream=True)
    async for event in stream:
        if isinstance(event, ResponseTextDeltaEvent):
            break  # running, with text
    await stream.close()
    cancelled = await client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    again = await client.responses.cancel(created.id)
    assert (again.id, again.status) == (created.id, "cancelled")
    assert (await client.responses.retrieve(created.id)).status == "cancelled"
    events = [e async for e in await client.responses.retrieve(created.id, stream=True)]
    assert isinstance(events[-1], ResponseFailedEvent) and events[-1].response.status == "cancelled"


async def test_provider_failures_end_the_stream_with_response_failed(client: openai.AsyncOpenAI) -> None:
    for model in ("status-500", "cut@after=2"):
        events = [e async for e in await client.responses.create(model=model, input="echo:abcdefghijkl", stream=True)]
        failed = events[-1]
        assert isinstance(failed, ResponseFailedEvent), model
        assert failed.response.error is not None and str(failed.response.error.code) == "upstream_unavailable"
    with pytest.raises(openai.InternalServerError) as raised:
        await client.responses.create(model="status-401", input="hi")
    assert raised.value.code == "upstream_auth"


async def test_an_unknown_id_is_a_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("gen_" + "0" * 32)
