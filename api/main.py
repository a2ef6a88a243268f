"""API entry point (`uvicorn api.main:app`): builds the FastAPI app, its middleware and its connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from api import errors
from api.compat.chat import ChatCompletionCreate
from api.compat.responses import ResponseCreate
from api.limits import BodySizeLimit
from api.routes import chat, generations, ops, responses
from api.schemas import GenerationCreate
from api.wiring import close_services, open_services
from shared import tracing
from shared.config import Settings, get_settings
from shared.logging import configure_logging


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings)
        app.state.services = await open_services(settings)
        try:
            yield
        finally:
            await close_services(app.state.services)
            tracing.shutdown()

    # /docs and /redoc with their JavaScript and CSS served from the installed package, not a CDN.
    app = FastAPIOffline(
        title="sse-relay",
        version="0.1.0",
        summary="Queue-backed, resumable Server-Sent Events for LLM output.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(generations.router)
    app.include_router(chat.router)
    app.include_router(responses.router)
    app.include_router(ops.router)
    # The browser module (/static/sse-relay.js) ships inside the package, so it is served offline and versioned.
    app.mount("/static", StaticFiles(packages=[("api", "static")]), name="static")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key", "Prefer"],
            expose_headers=["X-Generation-Id", "Location", "X-Generation-Token"],
        )
    _document_body(app)
    if tracing.setup("sse-relay-api"):
        tracing.instrument_app(app)
    return app


_BODIES: tuple[type[BaseModel], ...] = (GenerationCreate, ChatCompletionCreate, ResponseCreate)


def _document_body(app: FastAPI) -> None:
    """Add the POST bodies' schemas (read by our own dependencies, so FastAPI does not see them) to /openapi.json."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODIES:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


app = create_app()
