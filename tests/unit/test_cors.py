"""CORS_ALLOW_ORIGINS: off by default; when set, browsers on those origins may call the API and read its headers."""

from __future__ import annotations

import httpx

from api.main import create_app
from shared.config import Settings

FRONTEND = "https://app.example.com"


async def _preflight(settings: Settings) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.options(
            "/v1/generations",
            headers={"Origin": FRONTEND, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type,authorization,last-event-id"},
        )  # fmt: skip


async def test_cors_is_off_by_default() -> None:
    response = await _preflight(Settings(cors_allow_origins=[]))
    assert "access-control-allow-origin" not in response.headers


async def test_allowed_origin_may_post_and_read_the_generation_headers() -> None:
    settings = Settings(cors_allow_origins=[FRONTEND])
    preflight = await _preflight(settings)
    assert preflight.headers["access-control-allow-origin"] == FRONTEND
    assert "POST" in preflight.headers["access-control-allow-methods"]
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/healthz", headers={"Origin": FRONTEND})
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-generation-id", "location", "x-generation-token"} <= exposed


async def test_other_origins_are_not_allowed() -> None:
    response = await _preflight(Settings(cors_allow_origins=["https://other.example.com"]))
    assert response.headers.get("access-control-allow-origin") != FRONTEND
