"""FastAPI dependencies: the process's services, the calling client, and typed aliases for routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from api.enqueue import Enqueuer
from api.errors import ApiError
from api.stream_hub import StreamHub
from shared.config import Settings
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
    hub: StreamHub | None = None  # None on a Redis Cluster: each client then reads its own stream


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

ANONYMOUS = "anonymous"


def get_caller(request: Request, services: ServicesDep) -> str:
    """The caller's identity: a digest of its bearer key (the key itself is never stored), or anonymous."""
    keys = services.settings.api_keys
    if not keys:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        for key in keys:
            if hmac.compare_digest(token.encode(), key.encode()):
                return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
    raise ApiError(401, "unauthorized", "A valid bearer API key is required.", headers={"WWW-Authenticate": "Bearer"})


CallerDep = Annotated[str, Depends(get_caller)]


@dataclass(frozen=True, slots=True)
class Found:
    """A generation the caller may see: live in Redis (`state`), or finished and only in the store."""

    id: str
    state: GenerationState | None
    record: GenerationRecord | None


def not_found(generation_id: str) -> ApiError:
    return ApiError(404, "not_found", f"No generation with id {generation_id!r}.")


async def find_generation(generation_id: str, services: ServicesDep, caller: CallerDep) -> Found:
    """Redis while the generation is live, the durable store after; 404 for unknown or others' ids."""
    if not is_generation_id(generation_id):
        raise not_found(generation_id)
    state = await services.generations.get(generation_id)
    if state is not None:
        if state.owner and state.owner != caller:
            raise not_found(generation_id)
        return Found(generation_id, state, None)
    record = await services.store.get(generation_id)
    if record is None or record.owner != caller:
        raise not_found(generation_id)
    return Found(generation_id, None, record)


GenerationDep = Annotated[Found, Depends(find_generation)]
