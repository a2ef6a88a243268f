"""/v1/responses: OpenAI's Responses API over generations, background mode included: create (stream or not,
background or not), retrieve (also as a stream resumed with `starting_after`), cancel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from api import metrics
from api.compat.errors import failed_before_stream
from api.compat.responses import Facts, ResponseCreate, Transcript, response_body, response_object
from api.compat.source import entries, final, outputs
from api.deps import CallerDep, GenerationDep, ReadableDep, Services, ServicesDep, not_found
from api.schemas import ErrorBody
from api.service import save_cancelled, start_from_openai
from api.sse import sse_response
from shared.state import GenerationState
from shared.store.models import GenerationRecord
from shared.store.repository import aware
from shared.streams import fold, read_range

router = APIRouter(prefix="/v1/responses", tags=["openai"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 500, 503)
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResponseCreate"}}},
    }
}
_RESPONSE_OR_STREAM = {
    200: {
        "description": "A `response` object, or with `stream` its events (`event:` + `data:` with `sequence_number`)",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    **_ERRORS,
}
# How long a cancel waits for the worker to end a running generation, so that its answer says `cancelled`.
_CANCEL_WAIT_S = 10.0


@router.post("", responses=_RESPONSE_OR_STREAM, openapi_extra=_REQUEST_BODY, summary="Create a response")
async def create_response(
    http_request: Request,
    services: ServicesDep,
    caller: CallerDep,
    body: Annotated[ResponseCreate, Depends(response_body)],
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    request = body.stored_request(services.settings.ai_model_name)
    generation_id, state = await start_from_openai(
        services, http_request, caller, request, body.metadata or {}, idempotency_key
    )
    facts = await _facts(services, generation_id, state, None, with_text=not body.stream)
    headers = {"X-Generation-Id": generation_id}
    if body.stream:
        return sse_response(services.settings, metrics.track_stream(_events(services, facts, state, None)), headers)
    if body.background:
        facts.background = True
        return JSONResponse(response_object(facts), headers=headers)
    folded = await final(services, generation_id, state)
    terminal = folded.terminal or {}
    if terminal.get("type") != "done":
        raise failed_before_stream(terminal, generation_id)
    ended = await services.generations.get(generation_id)  # its request, for the parameters the answer echoes
    return JSONResponse(response_object(await _facts(services, generation_id, ended, None)), headers=headers)


@router.get("/{generation_id}", responses=_RESPONSE_OR_STREAM, summary="Retrieve a response, or stream its events")
async def retrieve_response(
    services: ServicesDep,
    found: ReadableDep,
    stream: Annotated[bool, Query(description="Stream the events instead")] = False,
    starting_after: Annotated[int | None, Query(ge=-1, description="Resume after this sequence number")] = None,
) -> Response:
    facts = await _facts(services, found.id, found.state, found.record, with_text=not stream)
    headers = {"X-Generation-Id": found.id}
    if not stream:
        return JSONResponse(response_object(facts), headers=headers)
    if starting_after is not None:
        metrics.RESUMES.inc()
    body = _events(services, facts, found.state, starting_after)
    return sse_response(services.settings, metrics.track_stream(body), headers)


@router.post("/{generation_id}/cancel", responses=_ERRORS, summary="Cancel a response (idempotent)")
async def cancel_response(services: ServicesDep, found: GenerationDep) -> JSONResponse:
    if found.state is not None:
        outcome, _ = await services.generations.cancel(found.id)
        if outcome == "cancelled":
            await save_cancelled(services, found.id)  # cancelled while queued: no worker writes its record
        elif outcome == "cancelling":
            await _until_ended(services, found.id, found.state)
    state = await services.generations.get(found.id)
    return JSONResponse(response_object(await _facts(services, found.id, state, None)))


async def _until_ended(services: Services, generation_id: str, state: GenerationState) -> None:
    """Until the worker wrote the generation's terminal event (it sees the cancel within CANCEL_POLL_S)."""
    try:
        async with asyncio.timeout(_CANCEL_WAIT_S):
            async for _ in entries(services, generation_id, state):
                pass
    except TimeoutError:
        return  # answered with the status it has; a later retrieve or cancel shows `cancelled`


async def _facts(
    services: Services,
    generation_id: str,
    state: GenerationState | None,
    record: GenerationRecord | None,
    with_text: bool = True,
) -> Facts:
    """The generation as the `response` object tells it: the record once it is finished, else the live state."""
    if state is None or state.terminal_id is not None:
        record = record or await services.store.get(generation_id)
        if record is not None:
            return _from_record(record, state)
    if state is None:
        raise not_found(generation_id)
    # A stream's transcript gathers the text itself; only a `response` object needs it read here.
    events_key = services.generations.keys(generation_id).events
    folded = fold(await read_range(services.streams, events_key)) if with_text else fold([])
    return Facts(
        id=state.id,
        created_at=int(state.created_at or 0),
        model=state.model,
        status=state.status,
        text=folded.text,
        reasoning=folded.reasoning,
        finish_reason=state.finish_reason,
        usage=state.usage,
        error_code=state.error_code,
        metadata=state.metadata,
        request=state.request,
    )


def _from_record(record: GenerationRecord, state: GenerationState | None) -> Facts:
    created = aware(record.created_at)
    return Facts(
        id=record.id,
        created_at=int(created.timestamp()) if created is not None else 0,
        model=record.model,
        status=record.status,
        text=record.text,
        reasoning=record.reasoning or "",
        finish_reason=record.finish_reason,
        usage=record.usage,
        error_code=record.error_code,
        metadata=record.meta,
        request=state.request if state is not None else None,
    )


async def _events(
    services: Services, facts: Facts, state: GenerationState | None, starting_after: int | None
) -> AsyncIterator[bytes]:
    """The numbered events of the whole generation, from the start; those a client already has are skipped."""
    transcript = Transcript(facts)
    stream = outputs(services, facts.id, state)
    try:
        numbered = transcript.start()
        while True:
            frames = b""
            for item in numbered:
                event = item.after(starting_after)
                if event is not None:
                    frames += _frame(event)
            if frames:
                yield frames
            output = await anext(stream, None)
            if output is None:
                return
            numbered = transcript.feed(output)
    finally:
        await stream.aclose()


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
