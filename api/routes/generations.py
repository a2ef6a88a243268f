"""/v1/generations: create (live SSE or 202), replay/follow events, read status, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from api import metrics
from api.body import generation_create
from api.deps import (
    CallerDep,
    Found,
    GenerationDep,
    OptionalCallerDep,
    ReadableDep,
    ServicesDep,
    caller_secret,
    find_generation,
    not_found,
    owner_of,
)
from api.listing import list_generations
from api.schemas import (
    ErrorBody,
    GenerationCreate,
    GenerationCreated,
    GenerationPage,
    GenerationStatus,
    GenerationView,
)
from api.service import created_response, save_cancelled, start_generation
from api.sse import frames, is_at_or_after, replay_plan, resume_point, sse_response, stored_entries, stored_frames
from api.views import live_view, stored_view
from shared.errors import ErrorCode
from shared.events import EVENT_TYPES
from shared.jobs import StoredRequest
from shared.messages import ChatMessage, build_messages
from shared.state import Status
from shared.streams import Entry, fold, read_range

router = APIRouter(prefix="/v1/generations", tags=["generations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}
# One event of the stream (OpenAPI 3.2's itemSchema, as FastAPI documents its own SSE routes): an id and one
# JSON `data` line whose `type` is one of the event types (shared/events.py).
_EVENT_DATA = {"type": "object", "required": ["type"], "properties": {"type": {"enum": list(EVENT_TYPES)}}}
_SSE_EVENT = {
    "type": "object",
    "required": ["id", "data"],
    "properties": {
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _EVENT_DATA},
    },
}
_SSE = {"content": {"text/event-stream": {"itemSchema": _SSE_EVENT}}, "description": "Server-Sent Events"}
# The body is read by our own dependency (so text/plain JSON works); document it as FastAPI would.
# api.main adds GenerationCreate and its sub-models to the components.
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationCreate"}}},
    }
}


def stored_request(body: GenerationCreate, default_model: str) -> StoredRequest:
    messages: list[ChatMessage] = (
        build_messages(body.prompt, body.system)
        if body.prompt is not None
        else [{"role": m.role, "content": m.content} for m in body.messages or []]
    )
    return StoredRequest(
        messages=messages,
        model=body.model or default_model,
        provider_args=body.provider_args(),
        on_complete=body.on_complete,
        on_content=body.on_content,
        error_context=body.error_context,
    )


@router.post(
    "",
    status_code=200,
    responses={200: _SSE, 202: {"model": GenerationCreated}, **_ERRORS},
    openapi_extra=_REQUEST_BODY,
    summary="Start a generation; stream it (default) or run it in the background",
)
async def create_generation(
    http_request: Request,
    services: ServicesDep,
    caller: CallerDep,
    body: Annotated[GenerationCreate, Depends(generation_create)],
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    request = stored_request(body, services.settings.ai_model_name)
    secret = caller_secret(http_request, services)
    started = await start_generation(
        services, request, body.metadata or {}, caller, idempotency_key or None, caller_secret=secret
    )
    background = body.background or "respond-async" in (prefer or "").lower()
    if not started.new and not background:
        response = await _events_response(services, await find_generation(started.id, services, caller), None)
        if started.token is not None:
            response.headers["X-Generation-Token"] = started.token
        return response
    return created_response(started, background, services)


async def generation_events(
    services: ServicesDep,
    found: ReadableDep,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    return await _events_response(services, found, resume_point(last_event_id_header, last_event_id))


async def _events_response(services: ServicesDep, found: Found, resume: str | None) -> Response:
    headers = {"X-Generation-Id": found.id}
    terminal_id = found.state.terminal_id if found.state else found.record.terminal_event_id if found.record else None
    if resume is not None:
        metrics.RESUMES.inc()
        if terminal_id is not None and is_at_or_after(resume, terminal_id):
            metrics.TERMINAL_204.inc()
            return Response(status_code=204)  # stops EventSource from reconnecting
    if found.state is None:
        assert found.record is not None
        entries = stored_entries(found.record, resume)
        _count_stored(entries)
        return sse_response(services.settings, metrics.track_stream(stored_frames(entries)), headers)
    keys = services.generations.keys(found.id)
    first, after = await replay_plan(services.streams, keys.events, found.state, resume)
    if first:
        metrics.RESETS.labels("replay_truncated").inc()
    block_ms = services.settings.sse_read_block_ms
    body = frames(services.streams, keys, first, after, block_ms, services.hub, count_replay=True)
    return sse_response(services.settings, metrics.track_stream(body), headers)


def _count_stored(entries: list[Entry]) -> None:
    metrics.REPLAYED.labels("store").inc(len(entries))
    # Events are encoded with "type" first (shared.events.encode): no JSON parse needed.
    resets = sum(1 for _, raw in entries if raw.startswith('{"type":"reset"'))
    if resets:
        metrics.RESETS.labels("replay_truncated").inc(resets)


async def get_generation(services: ServicesDep, found: ReadableDep, caller: OptionalCallerDep) -> GenerationView:
    state = found.state
    if state is None or state.terminal_id is not None:
        # Finished: the durable record is the source of truth (it also knows how on_complete went).
        record = found.record or await services.store.get(found.id)
        if record is not None:
            # Webhook deliveries name the operator's endpoints: for the owner, not for a read token's holder.
            owner = caller is not None and caller == owner_of(found)
            deliveries = await services.store.deliveries.of_generation(found.id) if owner else []
            return stored_view(record, deliveries)
    if state is None:
        raise not_found(found.id)
    folded = fold(await read_range(services.streams, services.generations.keys(state.id).events))
    return live_view(state, folded.text, folded.reasoning)


async def cancel_generation(services: ServicesDep, found: GenerationDep) -> JSONResponse:
    if found.state is None:
        assert found.record is not None
        return _status(found.id, found.record.status, 200)
    outcome, status = await services.generations.cancel(found.id)
    if outcome == "missing":
        raise not_found(found.id)
    if outcome == "finished":
        current = await services.generations.get(found.id)
        return _status(found.id, current.status if current else found.state.status, 200)
    if outcome == "cancelled":
        # No worker will ever finish a generation cancelled while queued: the API writes its record.
        metrics.FINISHED.labels("cancelled", ErrorCode.CANCELLED.value).inc()
        await save_cancelled(services, found.id)
    return _status(found.id, status, 202)


def _status(generation_id: str, status: str, code: int) -> JSONResponse:
    return JSONResponse({"id": generation_id, "status": status}, status_code=code)


async def list_own_generations(
    services: ServicesDep,
    caller: CallerDep,
    status: Annotated[Status | None, Query(description="Only generations with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=200, description="The `next` cursor of the previous page")] = None,
) -> GenerationPage:
    return await list_generations(services, caller, status, limit, after)


def add_read_routes(target: APIRouter) -> None:
    """Every route but create: on the relay's own router, and on `api.helper.relay_read_router()`'s."""
    target.add_api_route(
        "",
        list_own_generations,
        methods=["GET"],
        response_model=GenerationPage,
        responses=_ERRORS,
        summary="The caller's own generations, newest first (cursor pagination)",
    )
    target.add_api_route(
        "/{generation_id}/events",
        generation_events,
        methods=["GET"],
        responses={200: _SSE, 204: {"description": "Resumed at the terminal event: nothing more"}, **_ERRORS},
        summary="Replay and follow a generation's events (EventSource-compatible)",
    )
    target.add_api_route(
        "/{generation_id}",
        get_generation,
        methods=["GET"],
        response_model=GenerationView,
        responses=_ERRORS,
        summary="A generation's status",
    )
    target.add_api_route(
        "/{generation_id}/cancel",
        cancel_generation,
        methods=["POST"],
        response_model=GenerationStatus,
        status_code=202,
        responses={200: {"model": GenerationStatus}, **_ERRORS},
        summary="Cancel a generation (idempotent)",
    )


add_read_routes(router)
