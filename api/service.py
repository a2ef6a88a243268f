"""Starting a generation and answering with it: shared by the route and by `handle_openai_stream`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any, cast

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from api import metrics
from api.deps import Services, caller_secret
from api.errors import ApiError
from api.schemas import GenerationCreated
from api.sse import START, frames, sse_response
from shared import tracing
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.keys import idempotency_key
from shared.state import GenerationState, Status
from shared.store.repository import FinalResult
from shared.webhooks import endpoints

log = logging.getLogger("sse_relay.api")


@dataclass(frozen=True, slots=True)
class Started:
    id: str
    status: Status
    new: bool  # False: an Idempotency-Key attached this request to an existing generation
    token: str | None = None  # read token: a new generation's, or an idempotent replay's (derived again)


def fingerprint(request: StoredRequest, metadata: dict[str, Any]) -> str:
    canonical = json.dumps([request.model_dump(), metadata], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_hooks(services: Services, request: StoredRequest) -> None:
    for field, name in (("on_complete", request.on_complete), ("on_content", request.on_content)):
        if name is not None and name not in services.hooks:
            raise ApiError(422, "unknown_hook", f"{field}: no hook named {name!r} is registered on the workers.")


async def start_generation(
    services: Services,
    request: StoredRequest,
    metadata: dict[str, Any],
    caller: str,
    idempotency: str | None = None,
    caller_secret: str = "",
) -> Started:
    """Claim the idempotency key if any, then create and enqueue. A replayed key enqueues nothing.

    `caller_secret` (the caller's bearer key, empty when auth is off) keys the read token of an idempotent
    request, so that a replay can hand the same token back (see `idempotent_read_token`).
    """
    check_limits(services.settings, request)
    check_hooks(services, request)
    generation_id = new_generation_id()
    claim: _Claim | None = None
    if idempotency is not None:
        print_ = fingerprint(request, metadata)
        existing = await _claim_idempotency(services, generation_id, caller, idempotency, print_)
        if existing is not None:
            if existing.status == "queued":
                await services.enqueuer.ensure_job(existing.id)
            return await _with_replayed_token(services, existing, caller_secret, idempotency)
        claim = _Claim(_idempotency_redis_key(services, caller, idempotency), f"{generation_id} {print_}")
    if idempotency is None:
        token = secrets.token_urlsafe(24)
    else:
        token = idempotent_read_token(caller_secret, idempotency, generation_id)
    try:
        # Admission (the per-caller limit), state and job in one round trip; the job carries this span's context.
        with tracing.span("sse_relay.enqueue", "PRODUCER", {"sse_relay.generation_id": generation_id}):
            admitted = await services.enqueuer.submit(generation_id, request, metadata, caller, token_digest(token))
    except BaseException:
        # A pool timeout, a Redis blip, a cancelled request: unless the generation was created after all (the
        # command ran but its answer was lost), a retry must be able to claim the key, not find it pointing at
        # no generation until it expires.
        if claim is not None:
            await _release(services, claim, unless_created=generation_id)
        raise
    if not admitted:
        if claim is not None:
            await _release(services, claim)
        limit = services.settings.concurrency_limit(caller)
        raise ApiError(
            429, "too_many_generations", f"At most {limit} unfinished generations per caller; wait for one to end.",
            headers={"Retry-After": "1"},
        )  # fmt: skip
    metrics.GENERATIONS_CREATED.inc()
    return Started(generation_id, "queued", new=True, token=token)


async def start_from_openai(
    services: Services,
    http_request: Request,
    caller: str,
    request: StoredRequest,
    metadata: dict[str, Any],
    idempotency: str | None,
) -> tuple[str, GenerationState | None]:
    """An OpenAI-format request (chat completions, responses) started like any generation; -> its id and state."""
    secret = caller_secret(http_request, services)
    started = await start_generation(services, request, metadata, caller, idempotency or None, caller_secret=secret)
    return started.id, await services.generations.get(started.id)


def idempotent_read_token(caller_secret: str, idempotency: str, generation_id: str) -> str:
    """The read token of a generation started with an Idempotency-Key, derived instead of random.

    Only its digest is stored, so a replay cannot look the token up; it derives it again. Deriving it takes the
    caller's bearer key, so only that caller (who may read the generation with the key anyway) can; with auth
    off every client is one caller and may read every generation without a token, so nothing is given away.
    """
    key = f"{caller_secret}\0{idempotency}".encode()
    digest = hmac.new(key, f"sse-relay read token {generation_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


async def _with_replayed_token(services: Services, existing: Started, caller_secret: str, idempotency: str) -> Started:
    """The replay gets the generation's read token too, when it is the one the first request derived."""
    token = idempotent_read_token(caller_secret, idempotency, existing.id)
    state = await services.generations.get(existing.id)
    record = None if state is not None else await services.store.get(existing.id)
    stored = state.read_token_sha if state is not None else record.read_token_sha if record is not None else None
    if stored and hmac.compare_digest(stored, token_digest(token)):
        return replace(existing, token=token)
    return existing


@dataclass(frozen=True, slots=True)
class _Claim:
    redis_key: str
    value: str


async def _release(services: Services, claim: _Claim, unless_created: str | None = None) -> None:
    """Deletes the idempotency claim if it is still ours (and `unless_created` names no existing generation);
    a failure here is logged, never raised over the error being answered."""
    try:
        if unless_created is not None and await services.generations.get(unless_created) is not None:
            return
        await services.streams.eval(_RELEASE_IF_OURS, 1, claim.redis_key, claim.value)  # type: ignore[misc]
    except Exception as exc:
        log.warning("could not release an idempotency claim: %s", type(exc).__name__)


# Compare-and-delete: a claim that expired and was taken by another request meanwhile is not ours to delete.
_RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_limits(settings: Settings, request: StoredRequest) -> None:
    chars = sum(len(message["content"]) for message in request.messages)
    if chars > settings.max_prompt_chars:
        raise ApiError(
            413, "prompt_too_large", f"The messages hold {chars} characters; the limit is {settings.max_prompt_chars}."
        )
    if len(request.messages) > settings.max_messages:
        raise ApiError(422, "too_many_messages", f"At most {settings.max_messages} messages per generation.")
    max_tokens = request.provider_args.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > settings.max_tokens_limit:
        raise ApiError(422, "max_tokens_too_large", f"max_tokens may be at most {settings.max_tokens_limit}.")


def _idempotency_redis_key(services: Services, caller: str, key: str) -> str:
    return idempotency_key(services.settings.key_prefix, caller, hashlib.sha256(key.encode()).hexdigest())


async def _claim_idempotency(
    services: Services, generation_id: str, caller: str, key: str, print_: str
) -> Started | None:
    """SET NX of key -> our new id; if another request holds the key, its generation (same body) instead."""
    settings = services.settings
    redis_key = _idempotency_redis_key(services, caller, key)
    value = f"{generation_id} {print_}"
    if await services.streams.set(redis_key, value, nx=True, ex=settings.idempotency_ttl_s):
        return None
    existing = await services.streams.get(redis_key)
    if existing is None:  # the first key expired between our SET and GET: vanishingly rare, safe to retry
        raise ApiError(409, "idempotency_conflict", "This Idempotency-Key was being reused concurrently; retry.")
    existing_id, existing_print = str(existing).split(" ", 1)
    if existing_print != print_:
        raise ApiError(409, "idempotency_conflict", "This Idempotency-Key was used with a different request body.")
    return Started(existing_id, await _status_when_created(services, existing_id), new=False)


async def _status_when_created(services: Services, generation_id: str) -> Status:
    """The first request may still be between claiming the key and creating the generation: wait briefly."""
    for _ in range(100):
        state = await services.generations.get(generation_id)
        if state is not None:
            return state.status
        record = await services.store.get(generation_id)
        if record is not None:
            return cast(Status, record.status)
        await asyncio.sleep(0.02)
    raise ApiError(409, "idempotency_conflict", "The request holding this Idempotency-Key did not start; retry.")


async def save_cancelled(services: Services, generation_id: str) -> None:
    """The durable record of a generation cancelled while queued (no worker will ever write it)."""
    state = await services.generations.get(generation_id)
    if state is None or state.terminal_id is None:
        return
    record = FinalResult.ending(state, "cancelled", state.terminal_id, state.attempt, code=ErrorCode.CANCELLED)
    try:
        await services.store.save(record, endpoints(services.settings))
    except Exception as exc:
        # The cancel itself is done. The worker's reaper finds the generation still counted against its caller,
        # writes the record and frees the slot within a minute.
        log.warning("recording cancelled %s failed: %s; the reaper writes it", state.id, type(exc).__name__)
        return
    await services.generations.release(state.owner, state.id)


def created_response(started: Started, background: bool, services: Services) -> Response:
    url = f"{services.settings.public_url.rstrip('/')}/v1/generations/{started.id}"
    headers = {"X-Generation-Id": started.id, "Location": url}
    events_url = f"{url}/events"
    if started.token is not None:
        headers["X-Generation-Token"] = started.token
        events_url += f"?token={started.token}"
    if background:
        created = GenerationCreated(
            id=started.id,
            status=started.status,
            url=url,
            events_url=events_url,
            token=started.token,
        )
        return JSONResponse(created.model_dump(), status_code=202 if started.new else 200, headers=headers)
    keys = services.generations.keys(started.id)
    body = frames(services.streams, keys, [], START, services.settings.sse_read_block_ms, services.hub)
    return sse_response(services.settings, metrics.track_stream(body), headers)
