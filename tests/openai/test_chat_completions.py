"""The official openai SDK's chat.completions against the relay (real uvicorn, arq worker, Redis, fake provider)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.openai.conftest import CALLER_KEY, sdk
from tests.support.stack import Stack

ANSWER = "Queue-backed text, 一二三 ✓, in pieces."


async def test_stream_yields_the_answer_in_chunks_and_usage_last(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="demo@chunk=3,delay_ms=10",
        messages=[{"role": "user", "content": f"echo:{ANSWER}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3, "streamed, not in one piece"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(range(0, len(ANSWER), 3))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("gen_")


async def test_without_stream_the_answer_is_one_completion(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="demo@delay_ms=1", messages=[{"role": "user", "content": f"echo:{ANSWER}"}], max_tokens=1000
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_it_is_a_generation_like_any_other(client: openai.AsyncOpenAI, openai_stack: Stack) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="demo@delay_ms=1",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "echo:by id"}],
        metadata={"app": "sdk"},
    )
    generation_id = raw.headers["x-generation-id"]
    assert raw.parse().id == generation_id
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    async with openai_stack.client(headers=headers) as http:
        view = (await http.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["text"], view["metadata"]) == ("done", "by id", {"app": "sdk"})


async def test_max_completion_tokens_cuts_the_answer_with_finish_reason_length(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="demo@chunk=2,delay_ms=1",
        messages=[{"role": "user", "content": "echo:abcdefghij"}],
        max_completion_tokens=2,
    )
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("abcd", "length")


async def test_reasoning_arrives_as_reasoning_content(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="reasoning@delay_ms=1", messages=[{"role": "user", "content": "echo:answer"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning.startswith("Let me think")
    assert "".join(d.content or "" for d in deltas) == "answer"


async def test_a_wrong_key_is_an_authentication_error(openai_stack: Stack) -> None:
    async with sdk(openai_stack, api_key="sk-wrong") as wrong:
        with pytest.raises(openai.AuthenticationError) as raised:
            await wrong.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 401
    assert raised.value.code == "unauthorized" and raised.value.type == "authentication_error"


@pytest.mark.parametrize(
    ("params", "param"),
    [({"n": 2}, "n"), ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools")],
)
async def test_n_and_tools_are_refused_with_a_400(
    client: openai.AsyncOpenAI, params: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "hi"}],
            extra_body=params,
        )
    assert (raised.value.param, raised.value.code) == (param, "unsupported_parameter")


async def test_a_bad_body_is_an_openai_shaped_400(openai_stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    async with httpx.AsyncClient(base_url=openai_stack.api_url, headers=headers) as http:
        response = await http.post("/v1/chat/completions", json={"model": "demo", "messages": [], "temperature": 9})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


async def test_a_provider_failure_before_the_first_token_is_a_status_error(
    client: openai.AsyncOpenAI, openai_stack: Stack
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(
                model="status-429", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        assert raised.value.code == "upstream_rate_limited"
        assert raised.value.response.headers["x-generation-id"].startswith("gen_")
        assert "simulated" not in raised.value.message.lower()
    with pytest.raises(openai.InternalServerError) as auth:
        await client.chat.completions.create(model="status-401", messages=[{"role": "user", "content": "hi"}])
    assert auth.value.code == "upstream_auth"
    assert openai_stack.secret not in auth.value.message and openai_stack.secret not in auth.value.response.text


async def test_a_provider_failure_mid_stream_is_raised_by_the_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="cut@after=3", messages=[{"role": "user", "content": "echo:0123456789abcdefghij"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert raised.value.code == "upstream_unavailable"
    assert text == "0123456789ab"


async def test_cancel_by_id_ends_the_stream_with_cancelled(client: openai.AsyncOpenAI, openai_stack: Stack) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="demo@chunk=1,delay_ms=50", messages=[{"role": "user", "content": f"echo:{ANSWER}"}], stream=True
    )
    generation_id = raw.headers["x-generation-id"]
    headers = {"Authorization": f"Bearer {CALLER_KEY}"}
    text, cancelled = "", False
    with pytest.raises(openai.APIError) as raised:
        async for chunk in raw.parse():
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
            if text and not cancelled:
                cancelled = True
                async with openai_stack.client(headers=headers) as http:
                    cancel = await http.post(f"/v1/generations/{generation_id}/cancel")
                assert cancel.status_code in (200, 202)
    assert raised.value.code == "cancelled"
    assert ANSWER.startswith(text) and text != ANSWER


async def test_an_idempotency_key_attaches_a_repeated_call_to_the_same_generation(client: openai.AsyncOpenAI) -> None:
    headers = {"Idempotency-Key": "chat-once-1"}
    messages: list[Any] = [{"role": "user", "content": "echo:once"}]
    first = await client.chat.completions.create(model="demo@delay_ms=1", messages=messages, extra_headers=headers)
    again = await client.chat.completions.create(model="demo@delay_ms=1", messages=messages, extra_headers=headers)
    assert first.id == again.id and again.choices[0].message.content == "once"
