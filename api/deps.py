"""FastAPI dependencies: the process's services, the calling client, and typed aliases for routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Query, Request

from api.enqueue import Enqueuer
from api.errors import ApiError
from api.stream_hub import StreamHub
from shared.config import ANONYMOUS_CALLER, Settings
from shared.hooks import HookRegistry
from shared.ids import is_generation_id
from shared.redis_client import StreamsRedis
from shared.state import Generations, GenerationState
from shared.store.models import GenerationRecord
from shared.store.repository import ResultStore


@dataclass(slots=True)
class Services:
    """Built once per process (api.main's lifespan, or lazily by api.helper)."""

    settings: Settings
    streams: StreamsRedis
    generations: Generations
    queue: ArqRedis
    store: ResultStore
    hooks: HookRegistry
    enqueuer: Enqueuer
    hub: StreamHub | None = None


# Dependencies are `async def` even where nothing awaits: FastAPI runs a plain `def` one in a worker thread,
# a hop per dependency per request (measured in the time to first token).
async def get_services(request: Request) -> Services:
    # The relay's own app keeps them on app.state; api.helper's read router, mounted in an app of the
    # user's own, puts them on the request.
    services: Services = getattr(request.state, "services", None) or request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

ANONYMOUS = ANONYMOUS_CALLER


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "A valid bearer API key is required.", headers={"WWW-Authenticate": "Bearer"})


async def get_optional_caller(request: Request, services: ServicesDep) -> str | None:
    """A digest of the bearer key (the key itself is never stored); anonymous when auth is off; None when
    auth is on and no Authorization header was sent (a read token may still do). A wrong key is a 401."""
    keys = services.settings.api_keys
    if not keys:
        return ANONYMOUS
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        for key in keys:
            if hmac.compare_digest(token.encode(), key.encode()):
                return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    raise _unauthorized()


async def get_caller(caller: Annotated[str | None, Depends(get_optional_caller)]) -> str:
    if caller is None:
        raise _unauthorized()
    return caller


def caller_secret(request: Request, services: Services) -> str:
    """The bearer key the request authenticated with (already checked by get_caller); empty when auth is off.
    Kept in memory for the request only: it keys values only this caller can derive (a replay's read token)."""
    if not services.settings.api_keys:
        return ""
    _, _, key = request.headers.get("authorization", "").partition(" ")
    return key.strip()


CallerDep = Annotated[str, Depends(get_caller)]
OptionalCallerDep = Annotated[str | None, Depends(get_optional_caller)]


@dataclass(frozen=True, slots=True)
class Found:
    """A generation the caller may see: live in Redis (`state`), or finished and only in the store."""

    id: str
    state: GenerationState | None
    record: GenerationRecord | None


def not_found(generation_id: str) -> ApiError:
    return ApiError(404, "not_found", f"No generation with id {generation_id!r}.")


async def _lookup(generation_id: str, services: Services) -> Found:
    """Redis while the generation is live, the durable store after; 404 if neither knows it."""
    if is_generation_id(generation_id):
        state = await services.generations.get(generation_id)
        if state is not None:
            return Found(generation_id, state, None)
        record = await services.store.get(generation_id)
        if record is not None:
            return Found(generation_id, None, record)
    raise not_found(generation_id)


def owner_of(found: Found) -> str:
    return found.state.owner if found.state else found.record.owner if found.record else ""


def _token_sha(found: Found) -> str | None:
    return found.state.read_token_sha if found.state else found.record.read_token_sha if found.record else None


async def find_generation(generation_id: str, services: ServicesDep, caller: CallerDep) -> Found:
    """For the owner only (cancel, idempotent attach): another caller's id is a 404, never a 403."""
    found = await _lookup(generation_id, services)
    if owner_of(found) != caller:
        raise not_found(generation_id)
    return found


async def readable_generation(
    generation_id: str,
    services: ServicesDep,
    caller: OptionalCallerDep,
    token: Annotated[str | None, Query(max_length=128, description="The generation's read token")] = None,
) -> Found:
    """For reading: the owner's bearer key, or the generation's read token (a browser's EventSource cannot
    send headers, so the token travels as `?token=`)."""
    if caller is None and token is None:
        raise _unauthorized()
    found = await _lookup(generation_id, services)
    if caller is not None and owner_of(found) == caller:
        return found
    expected = _token_sha(found)
    if token is not None and expected and hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected):
        return found
    raise not_found(generation_id)


GenerationDep = Annotated[Found, Depends(find_generation)]
ReadableDep = Annotated[Found, Depends(readable_generation)]
