"""FastAPI dependencies: the process's services, the calling client, and typed aliases for routes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from api.errors import ApiError
from shared.config import Settings
from shared.ids import is_generation_id
from shared.redis_client import StreamsRedis
from shared.state import Generations, GenerationState


@dataclass(slots=True)
class Services:
    """Built once per process in the app's lifespan (api.main)."""

    settings: Settings
    streams: StreamsRedis
    generations: Generations
    queue: ArqRedis


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


async def owned_generation(generation_id: str, services: ServicesDep, caller: CallerDep) -> GenerationState:
    """The generation, if it exists and belongs to the caller; otherwise 404 (never reveal others' ids)."""
    state = await services.generations.get(generation_id) if is_generation_id(generation_id) else None
    if state is None or (state.owner and state.owner != caller):
        raise ApiError(404, "not_found", f"No generation with id {generation_id!r}.")
    return state


GenerationDep = Annotated[GenerationState, Depends(owned_generation)]
