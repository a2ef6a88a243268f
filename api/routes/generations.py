"""/v1/generations: create (live SSE or 202), replay/follow events, read status, cancel."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse

from api import metrics
from api.body import generation_create
from api.deps import CallerDep, GenerationDep, ServicesDep
from api.errors import ApiError
from api.schemas import (
    ErrorBody,
    GenerationCreate,
    GenerationCreated,
    GenerationError,
    GenerationStatus,
    GenerationView,
)
from api.sse import START, frames, is_at_or_after, replay_plan, resume_point, sse_response
from shared.errors import SAFE_MESSAGES, ErrorCode
from shared.ids import new_generation_id
from shared.jobs import JOB_FUNCTION, StoredRequest
from shared.messages import ChatMessage, build_messages
from shared.state import GenerationState
from shared.streams import fold, read_range

router = APIRouter(prefix="/v1/generations", tags=["generations"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 503)}
_SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "Server-Sent Events"}
# The body is read by our own dependency (so text/plain JSON works); document it as FastAPI would.
# api.main.openapi() adds GenerationCreate and its sub-models to the components.
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationCreate"}}},
    }
}


def _urls(generation_id: str) -> tuple[str, str]:
    url = f"/v1/generations/{generation_id}"
    return url, f"{url}/events"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _hooks_known(body: GenerationCreate) -> None:
    # No hook registry exists yet, so every hook name is unknown: refuse before anything is enqueued.
    for field in ("on_complete", "on_content"):
        name = getattr(body, field)
        if name is not None:
            raise ApiError(422, "unknown_hook", f"{field}: no hook named {name!r} is registered on the workers.")


@router.post(
    "",
    status_code=200,
    responses={200: _SSE, 202: {"model": GenerationCreated}, **_ERRORS},
    openapi_extra=_REQUEST_BODY,
    summary="Start a generation; stream it (default) or run it in the background",
)
async def create_generation(
    services: ServicesDep,
    caller: CallerDep,
    body: Annotated[GenerationCreate, Depends(generation_create)],
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    _hooks_known(body)
    settings = services.settings
    messages: list[ChatMessage] = (
        build_messages(body.prompt, body.system)
        if body.prompt is not None
        else [{"role": m.role, "content": m.content} for m in body.messages or []]
    )
    request = StoredRequest(
        messages=messages,
        model=body.model or settings.ai_model_name,
        provider_args=body.provider_args(),
        on_complete=body.on_complete,
        on_content=body.on_content,
        error_context=body.error_context,
    )
    generation_id = new_generation_id()
    await services.generations.create(generation_id, request, body.metadata or {}, caller)
    await services.queue.enqueue_job(JOB_FUNCTION, generation_id, _job_id=generation_id)
    metrics.GENERATIONS_CREATED.inc()
    url, events_url = _urls(generation_id)
    headers = {"X-Generation-Id": generation_id, "Location": url}
    background = body.background or "respond-async" in (prefer or "").lower()
    if background:
        created = GenerationCreated(id=generation_id, status="queued", url=url, events_url=events_url)
        return JSONResponse(created.model_dump(), status_code=202, headers=headers)
    keys = services.generations.keys(generation_id)
    stream = frames(services.streams, keys, [], START, settings.sse_read_block_ms)
    return sse_response(settings, metrics.track_stream(stream), headers)


@router.get(
    "/{generation_id}/events",
    responses={200: _SSE, 204: {"description": "Resumed at the terminal event: nothing more"}, **_ERRORS},
    summary="Replay and follow a generation's events (EventSource-compatible)",
)
async def generation_events(
    services: ServicesDep,
    state: GenerationDep,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    resume = resume_point(last_event_id_header, last_event_id)
    if resume is not None and state.terminal_id is not None and is_at_or_after(resume, state.terminal_id):
        return Response(status_code=204)  # stops EventSource from reconnecting
    keys = services.generations.keys(state.id)
    first, after = await replay_plan(services.streams, keys.events, state, resume)
    stream = frames(services.streams, keys, first, after, services.settings.sse_read_block_ms)
    return sse_response(services.settings, metrics.track_stream(stream), {"X-Generation-Id": state.id})


@router.get("/{generation_id}", response_model=GenerationView, responses=_ERRORS, summary="A generation's status")
async def get_generation(services: ServicesDep, state: GenerationDep) -> GenerationView:
    entries = await read_range(services.streams, services.generations.keys(state.id).events)
    folded = fold(entries)
    return _view(state, folded.text, folded.reasoning)


def _view(state: GenerationState, text: str, reasoning: str) -> GenerationView:
    error = None
    if state.error_code:
        known = {code.value for code in ErrorCode}
        code = ErrorCode(state.error_code) if state.error_code in known else ErrorCode.INTERNAL
        error = GenerationError(code=state.error_code, message=SAFE_MESSAGES[code])
    return GenerationView(
        id=state.id,
        status=state.status,
        model=state.model,
        text=text,
        reasoning=reasoning or None,
        finish_reason=state.finish_reason,
        usage=state.usage,
        error=error,
        metadata=state.metadata,
        created_at=_iso(state.created_at) or _iso(time.time()) or "",
        started_at=_iso(state.started_at),
        finished_at=_iso(state.finished_at),
    )


@router.post(
    "/{generation_id}/cancel",
    response_model=GenerationStatus,
    status_code=202,
    responses={200: {"model": GenerationStatus}, **_ERRORS},
    summary="Cancel a generation (idempotent)",
)
async def cancel_generation(services: ServicesDep, state: GenerationDep) -> JSONResponse:
    outcome, status = await services.generations.cancel(state.id)
    if outcome == "missing":
        raise ApiError(404, "not_found", f"No generation with id {state.id!r}.")
    if outcome == "finished":
        current = await services.generations.get(state.id)
        final = current.status if current is not None else state.status
        return JSONResponse(GenerationStatus(id=state.id, status=final).model_dump(), status_code=200)
    return JSONResponse(GenerationStatus(id=state.id, status=status).model_dump(), status_code=202)  # type: ignore[arg-type]
