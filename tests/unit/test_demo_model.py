"""Tests for demo/model.py, the fake upstream: the real openai SDK over real HTTP parses every scenario."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest
import uvicorn
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from demo.model import REASONING_TEXT, answer_for, app, chunk_text, parse_model

Client = openai.AsyncOpenAI
Stats = dict[str, int]

PROMPT = "Hello, relay"
# The same conversation twice: typed for the SDK's create(), and as the plain dicts answer_for() takes.
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
PLAIN_MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    # Binding here and handing uvicorn the socket avoids a pick-a-port-then-bind race.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "demo model server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _client(base_url: str, *, max_retries: int = 0, timeout: openai.Timeout | None = None) -> Client:
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="sk-test",
        max_retries=max_retries,
        timeout=timeout if timeout is not None else openai.Timeout(5),
    )


async def _collect(
    base_url: str, model: str, prompt: str = PROMPT, *, max_tokens: int | None = None
) -> list[ChatCompletionChunk]:
    async with _client(base_url) as client:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=max_tokens,
        )
        return [chunk async for chunk in stream]


def _content(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def _finish_reasons(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


async def _stats(base_url: str) -> Stats:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base_url}/_fake/stats")
        response.raise_for_status()
        stats: Stats = response.json()
        return stats


async def _wait_stats(base_url: str, ok: Callable[[Stats], bool], timeout: float = 3.0) -> Stats:
    deadline = time.monotonic() + timeout
    while True:
        stats = await _stats(base_url)
        if ok(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


def test_answer_for_and_chunk_text() -> None:
    earlier = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"}]
    text = answer_for([*earlier, *PLAIN_MESSAGES])
    assert f'"{PROMPT}"' in text and "你好" in text and "🌍" in text and len(text) >= 200
    assert answer_for([{"role": "user", "content": "echo:  spaced  "}]) == "  spaced  "
    parts = [
        {"type": "text", "text": "echo:a"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "b"},
    ]
    assert answer_for([{"role": "user", "content": parts}]) == "ab"
    assert chunk_text("abcdefghij你好🌍", 3) == ["abc", "def", "ghi", "j你好", "🌍"]
    assert chunk_text("", 4) == []


def test_parse_model_params() -> None:
    assert parse_model("demo").delay_s == 0.025
    assert parse_model("gpt-4o-mini").delay_s == 0
    scenario = parse_model("status-429@retry_after_ms=10,fail_times=2")
    assert (scenario.status, scenario.retry_after_ms, scenario.fail_times) == (429, 10, 2)


async def test_clock_pieces_carry_their_send_time_at_the_pieces_length(base_url: str) -> None:
    before = time.time()
    pieces = _content(await _collect(base_url, "demo@delay_ms=0,chunk=18,clock=1", prompt="echo:" + "x" * 54))
    assert [len(piece) for piece in pieces] == [18, 18, 18]
    sent = [float(piece.rstrip(";")) for piece in pieces]
    assert before <= sent[0] <= sent[1] <= sent[2] <= time.time()


async def test_demo_stream_matches_answer_for(base_url: str) -> None:
    chunks = await _collect(base_url, "demo@delay_ms=0")
    expected = answer_for(PLAIN_MESSAGES)
    assert "".join(_content(chunks)) == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.model for c in chunks} == {"demo@delay_ms=0"}
    assert _finish_reasons(chunks) == ["stop"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == len(chunk_text(expected, 4))
    assert usage.prompt_tokens == len(PROMPT) // 4 + 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


async def test_echo_and_chunk_size(base_url: str) -> None:
    chunks = await _collect(base_url, "qwen-plus@chunk=3", "echo:abcdefghij你好🌍")
    assert _content(chunks) == ["abc", "def", "ghi", "j你好", "🌍"]
    chunks = await _collect(base_url, "gpt-4o-mini", "echo: keep  spaces ")
    assert "".join(_content(chunks)) == " keep  spaces "


async def test_vary_answers_each_request_for_the_same_prompt_differently(base_url: str) -> None:
    first = await _collect(base_url, "demo@delay_ms=0,vary=1", "echo:same prompt")
    second = await _collect(base_url, "demo@delay_ms=0,vary=1", "echo:same prompt")
    assert ("".join(_content(first)), "".join(_content(second))) == ("[1] same prompt", "[2] same prompt")


async def test_max_tokens_finishes_with_length(base_url: str) -> None:
    chunks = await _collect(base_url, "gpt-4o-mini", max_tokens=3)
    assert _content(chunks) == chunk_text(answer_for(PLAIN_MESSAGES), 4)[:3]
    assert _finish_reasons(chunks) == ["length"]


async def test_reasoning_then_content(base_url: str) -> None:
    chunks = await _collect(base_url, "reasoning")
    reasoning = [getattr(c.choices[0].delta, "reasoning_content", None) for c in chunks if c.choices]
    assert "".join(r for r in reasoning if r) == REASONING_TEXT
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(getattr(c.choices[0].delta, "reasoning_content", None) is None for c in content_chunks)
    assert "".join(_content(chunks)) == answer_for(PLAIN_MESSAGES)
    # Every reasoning chunk comes before the first content chunk.
    first_content = chunks.index(content_chunks[0])
    later = [c for c in chunks[first_content:] if c.choices]
    assert not any(getattr(c.choices[0].delta, "reasoning_content", None) for c in later)


async def test_non_streaming_completion_and_models(base_url: str) -> None:
    async with _client(base_url) as client:
        hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
        completion = await client.chat.completions.create(model="demo", messages=hi)
        assert completion.object == "chat.completion"
        assert completion.choices[0].message.content == answer_for([{"role": "user", "content": "hi"}])
        assert completion.choices[0].finish_reason == "stop"
        models = [m.id async for m in client.models.list()]
        assert {"demo", "qwen-plus", "gpt-4o-mini", "reasoning", "cut", "status-429"} <= set(models)


@pytest.mark.parametrize(
    ("model", "error_type", "code"),
    [
        ("status-401", openai.AuthenticationError, "invalid_api_key"),
        ("status-403", openai.PermissionDeniedError, "permission_denied"),
        ("status-429", openai.RateLimitError, "rate_limit_exceeded"),
        ("status-500", openai.InternalServerError, None),
        ("status-503", openai.InternalServerError, None),
        ("no-such-model", openai.NotFoundError, "model_not_found"),
    ],
)
async def test_status_scenarios_raise_sdk_errors(
    base_url: str, model: str, error_type: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(error_type) as caught:
        await _collect(base_url, model)
    assert caught.value.code == code
    if model in ("status-401", "status-403"):
        # The hostile part: the upstream quotes the full credential back, for secret-leak tests downstream.
        assert "Bearer sk-test" in caught.value.message
    if model == "no-such-model":
        assert "The model `no-such-model` does not exist" in caught.value.message


async def test_fail_times_then_success_and_retry_after(base_url: str) -> None:
    model = "status-429@retry_after_ms=10,fail_times=1"
    with pytest.raises(openai.RateLimitError) as caught:
        await _collect(base_url, model, "first key")
    assert caught.value.response.headers["retry-after-ms"] == "10"
    assert caught.value.response.headers["retry-after"] == "1"
    assert "".join(_content(await _collect(base_url, model, "first key"))) == answer_for(
        [{"role": "user", "content": "first key"}]
    )
    # A fresh (model, prompt) key fails again; the SDK's own retry honours retry-after-ms (10 ms, not 1 s).
    before = await _stats(base_url)
    started = time.monotonic()
    async with _client(base_url, max_retries=2) as client:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "second key"}], stream=True
        )
        assert "".join(_content([c async for c in stream])).startswith("This is the sse-relay demo model")
    assert time.monotonic() - started < 0.9
    assert (await _stats(base_url))["requests"] - before["requests"] == 2


async def test_malformed_raises_while_iterating(base_url: str) -> None:
    received: list[ChatCompletionChunk] = []
    async with _client(base_url) as client:
        stream = await client.chat.completions.create(model="malformed", messages=MESSAGES, stream=True)
        # The SDK does not wrap a bad data line: the raw json.JSONDecodeError escapes from iteration.
        with pytest.raises(json.JSONDecodeError):
            async for chunk in stream:
                received.append(chunk)
    assert _content(received) == chunk_text(answer_for(PLAIN_MESSAGES), 4)[:2]


async def test_truncate_ends_cleanly_without_finish_reason(base_url: str) -> None:
    chunks = await _collect(base_url, "truncate@after=3")
    assert _content(chunks) == chunk_text(answer_for(PLAIN_MESSAGES), 4)[:3]
    assert _finish_reasons(chunks) == []
    assert all(c.usage is None for c in chunks)


async def test_cut_is_a_connection_error_not_a_clean_end(base_url: str) -> None:
    received: list[ChatCompletionChunk] = []
    async with _client(base_url) as client:
        stream = await client.chat.completions.create(model="cut", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIConnectionError) as caught:
            async for chunk in stream:
                received.append(chunk)
    # openai 3.x talks through httpx2 and wraps the transport error; the cause is the incomplete chunked read.
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert _content(received) == chunk_text(answer_for(PLAIN_MESSAGES), 4)[:2]


async def test_stall_hits_read_timeout_and_server_notices(base_url: str) -> None:
    idle = await _wait_stats(base_url, lambda s: s["active"] == 0)
    received: list[ChatCompletionChunk] = []
    started = time.monotonic()
    async with _client(base_url, timeout=openai.Timeout(5, read=0.5)) as client:
        stream = await client.chat.completions.create(model="stall", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APITimeoutError):
            async for chunk in stream:
                received.append(chunk)
    assert time.monotonic() - started < 2
    assert len(_content(received)) == 2
    # The server-side sleep (default 3600 s) must end as soon as the client has gone.
    stats = await _wait_stats(base_url, lambda s: s["client_disconnects"] > idle["client_disconnects"])
    assert stats["client_disconnects"] == idle["client_disconnects"] + 1
    assert stats["active"] == 0


async def test_stall_before_times_out_before_headers(base_url: str) -> None:
    async with _client(base_url, timeout=openai.Timeout(5, read=0.5)) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="stall-before", messages=MESSAGES, stream=True)
    assert (await _wait_stats(base_url, lambda s: s["active"] == 0))["active"] == 0


async def test_cancelling_a_stream_counts_a_client_disconnect(base_url: str) -> None:
    idle = await _wait_stats(base_url, lambda s: s["active"] == 0)
    got_two = asyncio.Event()

    async def consume() -> None:
        async with _client(base_url) as client:
            slow = "demo@delay_ms=50"
            stream = await client.chat.completions.create(model=slow, messages=MESSAGES, stream=True)
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 2:
                    got_two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_two.wait(), timeout=3)
    assert (await _stats(base_url))["active"] == idle["active"] + 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = await _wait_stats(base_url, lambda s: s["client_disconnects"] > idle["client_disconnects"])
    assert stats["client_disconnects"] == idle["client_disconnects"] + 1
    assert stats["completed"] == idle["completed"]
    assert stats["active"] == 0


async def test_invalid_body_is_a_400_and_reset_zeroes_counters(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        bad_json = await http.post("/v1/chat/completions", content=b"{not json")
        assert bad_json.status_code == 400
        assert bad_json.json()["error"]["type"] == "invalid_request_error"
        no_messages = await http.post("/v1/chat/completions", json={"model": "demo"})
        assert no_messages.status_code == 400 and no_messages.json()["error"]["param"] == "messages"
        typo = {"model": "demo@dealy_ms=1", "messages": MESSAGES}
        bad_param = await http.post("/v1/chat/completions", json=typo)
        assert bad_param.status_code == 400
        reset = await http.post("/_fake/reset")
        zeroed = {"requests": 0, "active": 0, "completed": 0, "client_disconnects": 0, "last_request_ns": 0}
        assert reset.json() == zeroed
