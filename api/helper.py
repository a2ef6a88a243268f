"""The seed's helper in Python: `handle_openai_stream(messages, ...)` returns the SSE response from any route.

Like the seed's `handleOpenAIStream`, it is called without `await` and returns a response at once; the
generation is created and enqueued when the response is served, then streamed through Redis like any other
(so it survives reconnects, and `on_complete` runs on the worker exactly once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send

from api.deps import ANONYMOUS, Services
from api.errors import ApiError, describe_validation, error_response
from api.routes.generations import add_read_routes
from api.service import created_response, start_generation
from api.wiring import open_services
from shared.config import Settings, get_settings
from shared.hooks import UnknownHook
from shared.jobs import StoredRequest
from shared.messages import ChatMessage, build_messages

__all__ = ["build_messages", "handle_openai_stream", "relay_read_router"]

Hook = str | Callable[..., Any] | None
_SERVICES: dict[asyncio.AbstractEventLoop, Services] = {}


async def relay_services(settings: Settings | None = None) -> Services:
    """One set of connections per event loop, made on first use (the seed's singleton client)."""
    loop = asyncio.get_running_loop()
    if loop not in _SERVICES:
        _SERVICES[loop] = await open_services(settings or get_settings(), migrate=False)
    return _SERVICES[loop]


class _RelayResponse(Response):
    """An ASGI response that starts the generation when served, then answers like POST /v1/generations."""

    def __init__(self, request: dict[str, Any], metadata: dict[str, Any], owner: str, background: bool) -> None:
        super().__init__()
        self._request = request
        self._metadata = metadata
        self._owner = owner
        self._background = background

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            services = await relay_services()
            request = self._stored_request(services)
            started = await start_generation(services, request, self._metadata, self._owner)
            response: Response = created_response(started, self._background, services)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message)
        except (RedisError, OSError):
            response = error_response(
                503, "redis_unavailable", "The service's Redis is unreachable; try again shortly."
            )
        await response(scope, receive, send)

    def _stored_request(self, services: Services) -> StoredRequest:
        fields = dict(self._request)
        for name in ("on_complete", "on_content"):
            hook = fields[name]
            if hook is not None:
                try:
                    fields[name] = services.hooks.name_of(hook)
                except UnknownHook as exc:
                    raise ApiError(422, "unknown_hook", f"{name}: {exc}") from None
        fields["model"] = fields["model"] or services.settings.ai_model_name
        return StoredRequest(**fields)


def handle_openai_stream(
    messages: Sequence[ChatMessage] | Sequence[Mapping[str, str]],
    *,
    model: str | None = None,
    temperature: float | None = None,
    error_context: str | None = None,
    on_content: Hook = None,
    on_complete: Hook = None,
    background: bool = False,
    metadata: dict[str, Any] | None = None,
    owner: str = ANONYMOUS,
    **provider_args: Any,
) -> Response:
    """Stream a chat completion to the caller as SSE (or start it in the background: 202 with its id).

    `on_content(chunk)` / `on_complete(text, generation)` run on the worker: pass a function decorated with
    `shared.hooks.hook` in a module listed in SSE_RELAY_HOOK_MODULES, or its registered name.
    """
    if temperature is not None:
        provider_args["temperature"] = temperature
    request = {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "model": model,
        "provider_args": provider_args,
        "on_complete": on_complete,
        "on_content": on_content,
        "error_context": error_context,
    }
    return _RelayResponse(request, metadata or {}, owner, background)


class _RelayRoute(APIRoute):
    """A relay read route inside an app of the user's own: it brings the relay's connections (the same ones
    `handle_openai_stream` uses) and answers errors in the relay's JSON shape without the app's handlers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            request.state.services = await relay_services()
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(exc.status, exc.code, exc.message, exc.headers)
            except RequestValidationError as exc:
                return error_response(422, "validation_error", describe_validation(list(exc.errors())))
            except (RedisError, OSError):
                return error_response(503, "redis_unavailable", "The service's Redis is unreachable; try again.")

        return route


def relay_read_router() -> APIRouter:
    """The relay's read routes under /v1/generations (events with resume, status, cancel, list), for an app
    whose routes start generations with `handle_openai_stream`: `app.include_router(relay_read_router())`
    makes the `Location` those routes answer resolvable, so its clients can resume."""
    router = APIRouter(prefix="/v1/generations", tags=["sse-relay"], route_class=_RelayRoute)
    add_read_routes(router)
    return router
