"""A worker SIGKILLed mid-stream under an OpenAI SDK client: another worker's retry continues the text the client
holds when it repeats it, and ends the stream with `generation_restarted` when it departs from it; the final
result is retrievable by id either way."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)

from tests.openai.conftest import CALLER_KEY, sdk
from tests.support.sse import read_events
from tests.support.stack import Stack, running_stack

TEXT = "A text long enough to be cut: 一二三四五六七八九十, and then some more words to go."
# The demo model counts requests per (model, prompt) for vary=1: each test asks with a prompt of its own.
RTEXT = TEXT + " (responses)"
_names = itertools.count(2)


@pytest.fixture(scope="module")
def crash_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack: its workers get killed.
    with running_stack(redis_url, tmp_path_factory.mktemp("openai-crash"), SSE_RELAY_API_KEYS=CALLER_KEY) as stack:
        yield stack


@pytest.fixture
async def crash_client(crash_stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(crash_stack) as relay:
        yield relay


def kill_running_worker(stack: Stack) -> None:
    """SIGKILL every live worker, then start a fresh one: it runs the generation's next attempt."""
    for name, process in list(stack.processes.items()):
        if name.startswith("worker") and process.popen.poll() is None:
            process.kill()
    stack.start_worker(f"worker-{next(_names)}")


async def relay_http(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.api_url, headers={"Authorization": f"Bearer {CALLER_KEY}"}, timeout=30)


async def final_view(stack: Stack, generation_id: str) -> dict[str, object]:
    async with await relay_http(stack) as http:
        deadline = time.monotonic() + 30
        while (view := (await http.get(f"/v1/generations/{generation_id}")).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.05)
        return dict(view)


async def retried(stack: Stack, generation_id: str) -> bool:
    async with await relay_http(stack) as http, http.stream("GET", f"/v1/generations/{generation_id}/events") as r:
        return any(event.type == "reset" for event in await read_events(r))


async def test_chat_stream_continues_when_the_retry_repeats_the_text(
    crash_client: openai.AsyncOpenAI, crash_stack: Stack
) -> None:
    raw = await crash_client.chat.completions.with_raw_response.create(
        model="demo@chunk=2,delay_ms=30", messages=[{"role": "user", "content": f"echo:{TEXT}"}], stream=True
    )
    generation_id = raw.headers["x-generation-id"]
    pieces: list[str] = []
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 3:
                kill_running_worker(crash_stack)
    assert "".join(pieces) == TEXT, "every character exactly once"
    assert await retried(crash_stack, generation_id), "the worker really died mid-stream"
    assert (await final_view(crash_stack, generation_id))["text"] == TEXT


async def test_chat_stream_ends_with_generation_restarted_when_the_retry_departs(
    crash_client: openai.AsyncOpenAI, crash_stack: Stack
) -> None:
    raw = await crash_client.chat.completions.with_raw_response.create(
        model="demo@chunk=2,delay_ms=30,vary=1", messages=[{"role": "user", "content": f"echo:{TEXT}"}], stream=True
    )
    generation_id = raw.headers["x-generation-id"]
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 3:
                    kill_running_worker(crash_stack)
    assert raised.value.code == "generation_restarted"
    sent = "".join(pieces)
    assert f"[1] {TEXT}".startswith(sent), "nothing of the second attempt reached the client"
    view = await final_view(crash_stack, generation_id)
    assert (view["status"], view["text"]) == ("done", f"[2] {TEXT}")


async def test_responses_stream_continues_when_the_retry_repeats_the_text(
    crash_client: openai.AsyncOpenAI, crash_stack: Stack
) -> None:
    created = await crash_client.responses.create(
        model="demo@chunk=2,delay_ms=30", input=f"echo:{TEXT}", background=True
    )
    events: list[ResponseStreamEvent] = []
    async for event in await crash_client.responses.retrieve(created.id, stream=True):
        events.append(event)
        if len([e for e in events if isinstance(e, ResponseTextDeltaEvent)]) == 3 and isinstance(
            event, ResponseTextDeltaEvent
        ):
            kill_running_worker(crash_stack)
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) == TEXT
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers))
    assert isinstance(events[-1], ResponseCompletedEvent) and events[-1].response.output_text == TEXT
    assert await retried(crash_stack, created.id), "the worker really died mid-stream"


async def test_responses_stream_ends_with_a_restarted_error_when_the_retry_departs(
    crash_client: openai.AsyncOpenAI, crash_stack: Stack
) -> None:
    created = await crash_client.responses.create(
        model="demo@chunk=2,delay_ms=30,vary=1", input=f"echo:{RTEXT}", background=True
    )
    events: list[ResponseStreamEvent] = []
    async for event in await crash_client.responses.retrieve(created.id, stream=True):
        events.append(event)
        if len([e for e in events if isinstance(e, ResponseTextDeltaEvent)]) == 3 and isinstance(
            event, ResponseTextDeltaEvent
        ):
            kill_running_worker(crash_stack)
    error = events[-1]
    assert isinstance(error, ResponseErrorEvent) and error.code == "generation_restarted"
    sent = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert f"[1] {RTEXT}".startswith(sent)
    final = await crash_client.responses.retrieve(created.id)
    deadline = time.monotonic() + 30
    while final.status not in ("completed", "failed"):
        assert time.monotonic() < deadline, final.status
        await asyncio.sleep(0.05)
        final = await crash_client.responses.retrieve(created.id)
    assert (final.status, final.output_text) == ("completed", f"[2] {RTEXT}")
