"""Operational routes: liveness, readiness, metrics and the demo page."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from api.deps import ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis answers (503 if not)")
async def readyz(services: ServicesDep) -> JSONResponse:
    try:
        await services.streams.ping()
        await services.queue.ping()
    except (RedisError, OSError):
        body = {"status": "unavailable", "error": {"code": "redis_unavailable", "message": "Redis is unreachable."}}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def demo_page() -> HTMLResponse:
    return HTMLResponse(files("api").joinpath("static/index.html").read_text(encoding="utf-8"))
