"""Baselines served by uvicorn like the relay: DIRECT proxies the provider in-process, MEMORY streams from memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(payload: dict[str, Any], event_id: str | None = None) -> bytes:
    """One SSE frame with the relay's shape: optional `id:` line, one `data:` line of compact JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return (head + "data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n\n").encode()


def done_payload(text: str, finish_reason: str | None) -> dict[str, Any]:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return {"type": "done", "data": {"finish_reason": finish_reason, "length": len(text), "sha256": digest}}


# DIRECT: the seed's pattern, the provider's stream proxied inside the request, one client per process.


class DirectBody(BaseModel):
    prompt: str
    model: str = "demo"


@asynccontextmanager
async def _direct_lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.client = openai.AsyncOpenAI(
        base_url=os.environ["BENCH_UPSTREAM_URL"] + "/v1",
        api_key=os.environ.get("OPENAI_API_KEY", "bench"),
        # The worker's transport (worker/upstream.py): relay minus DIRECT then measures the queue path only.
        http_client=openai.DefaultAioHttpClient(),
    )
    async with app.state.client:
        yield


direct_app = FastAPI(lifespan=_direct_lifespan)


@direct_app.post("/v1/generations")
async def direct_generate(body: DirectBody, request: Request) -> StreamingResponse:
    client: openai.AsyncOpenAI = request.app.state.client
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": body.prompt}]

    async def events() -> AsyncIterator[bytes]:
        text: list[str] = []
        finish_reason: str | None = None
        try:
            stream = await client.chat.completions.create(model=body.model, messages=messages, stream=True)
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
                        yield frame({"type": "content", "data": choice.delta.content})
                    finish_reason = choice.finish_reason or finish_reason
        except openai.OpenAIError as exc:
            yield frame({"type": "error", "error": "upstream failed", "code": type(exc).__name__})
            return
        yield frame(done_payload("".join(text), finish_reason))

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


# MEMORY: the same events from memory, paced like the fake upstream (a pause before each piece), no Redis.
# Start gates: a stream asked with `gate=R` sends nothing until POST /open?gate=R, so every client can be
# connected before the first event (as with the relay, whose producer starts once all clients are in).
_gates: dict[int, asyncio.Event] = {}


async def memory_stream(request: Request) -> Response:
    count, size, delay_ms, gate = (int(request.query_params[k]) for k in ("n", "size", "delay_ms", "gate"))
    piece = ("abcdefgh" * (size // 8 + 1))[:size]

    async def events() -> AsyncIterator[bytes]:
        if gate:
            await _gates.setdefault(gate, asyncio.Event()).wait()
        # Ids shaped like Redis stream ids, so frames have the relay's size.
        base_ms = int(time.time() * 1000)
        content = {"type": "content", "data": piece}
        for index in range(count):
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield frame(content, f"{base_ms}-{index}")
        yield frame(done_payload(piece * count, "stop"), f"{base_ms}-{count}")

    return StreamingResponse(events(), media_type="text/event-stream", headers=_SSE_HEADERS)


async def memory_open(request: Request) -> Response:
    _gates.setdefault(int(request.query_params["gate"]), asyncio.Event()).set()
    return JSONResponse({"status": "open"})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


direct_app.add_route("/healthz", health)
memory_app = Starlette(
    routes=[Route("/stream", memory_stream), Route("/open", memory_open, methods=["POST"]), Route("/healthz", health)]
)
