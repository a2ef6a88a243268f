"""/v1/chat/completions: an OpenAI SDK's chat call as a generation (queue, store, hooks, cancel by id), answered
as `chat.completion.chunk` SSE messages or one `chat.completion`."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse

from api import metrics
from api.compat.chat import ChatCompletionCreate, Completion, chat_body
from api.compat.continuity import End, Output, Piece
from api.compat.errors import failed_before_stream, in_stream_error
from api.compat.source import final, outputs
from api.deps import CallerDep, ServicesDep
from api.schemas import ErrorBody
from api.service import start_from_openai
from api.sse import sse_response

router = APIRouter(prefix="/v1", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 409, 413, 415, 422, 429, 500, 503)
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionCreate"}}},
    }
}
_RESPONSES = {
    200: {
        "description": "One `chat.completion`, or with `stream: true` `chat.completion.chunk` messages ending "
        "with `data: [DONE]`",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **_ERRORS,
}


@router.post(
    "/chat/completions",
    responses=_RESPONSES,
    openapi_extra=_REQUEST_BODY,
    summary="OpenAI Chat Completions, run as a generation (X-Generation-Id)",
)
async def create_chat_completion(
    http_request: Request,
    services: ServicesDep,
    caller: CallerDep,
    body: Annotated[ChatCompletionCreate, Depends(chat_body)],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    request = body.stored_request(services.settings.ai_model_name)
    generation_id, state = await start_from_openai(
        services, http_request, caller, request, body.metadata or {}, idempotency_key
    )
    created = int(state.created_at) if state is not None and state.created_at else 0
    completion = Completion(generation_id, created, request.model)
    headers = {"X-Generation-Id": generation_id}
    if not body.stream:
        folded = await final(services, generation_id, state)
        terminal = folded.terminal or {}
        if terminal.get("type") != "done":
            raise failed_before_stream(terminal, generation_id)
        data: dict[str, Any] = terminal.get("data") or {}  # type: ignore[assignment]
        answer = completion.completion(folded.text, folded.reasoning, data.get("finish_reason"), data.get("usage"))
        return JSONResponse(answer, headers=headers)
    stream = outputs(services, generation_id, state)
    # The first output decides the answer: an error before any text is an HTTP status the SDK maps.
    first = await anext(stream)
    if isinstance(first, End) and (first.event is None or first.event.get("type") != "done"):
        await stream.aclose()
        raise failed_before_stream(first.event, generation_id)
    frames = _frames(completion, first, stream, body.include_usage)
    return sse_response(services.settings, metrics.track_stream(frames), headers)


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def _frames(
    completion: Completion, first: Output, rest: AsyncGenerator[Output, None], include_usage: bool
) -> AsyncIterator[bytes]:
    try:
        yield _data(completion.chunk({"role": "assistant", "content": ""}))
        output: Output | None = first
        while output is not None:
            if isinstance(output, Piece):
                key = "content" if output.channel == "content" else "reasoning_content"
                yield _data(completion.chunk({key: output.text}))
            else:
                yield _end(completion, output, include_usage)
                return
            output = await anext(rest, None)
    finally:
        await rest.aclose()


def _end(completion: Completion, end: End, include_usage: bool) -> bytes:
    event = end.event
    if event is None or event.get("type") != "done":
        # After the stream started a failure is a message in it; the SDK raises it as an APIError.
        return _data(in_stream_error(event))
    data = event.get("data") or {}
    frames = _data(completion.chunk({}, data.get("finish_reason") or "stop"))
    if include_usage:
        frames += _data(completion.usage_chunk(data.get("usage")))
    return frames + b"data: [DONE]\n\n"
