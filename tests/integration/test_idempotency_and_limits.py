"""Idempotency claims released on failure, the read token on a replay, and the limits (concurrency, max_tokens).

The API runs in-process (its real lifespan, a real Redis, a SQLite store) with no worker: generations stay
queued, which is what the concurrency limit counts. Failures are injected through the Services the API is
built from (its enqueuer), as a pool timeout or a Redis blip would surface there.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from api.enqueue import Enqueuer
from api.main import create_app
from shared.config import Settings

KEY = "caller-key-for-tests"


def _settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    prefix = "t" + uuid.uuid4().hex[:10]
    return Settings(
        redis_url=redis_url, key_prefix=prefix, queue_name=f"{prefix}:queue",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", openai_api_key=None, **overrides,
    )  # fmt: skip


@asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as client:
            yield client, app.state.services


class FailingOnce(Enqueuer):
    """The real enqueuer, whose next submit fails the way a pool timeout does (after the claim was made)."""

    failures = 1

    async def submit(self, *args: Any, **kwargs: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("No connection available.")
        return await super().submit(*args, **kwargs)


class AnswerLostOnce(Enqueuer):
    """The real enqueuer, whose next submit runs but whose answer is lost (a connection dropped after sending)."""

    failures = 1

    async def submit(self, *args: Any, **kwargs: Any) -> bool:
        admitted = await super().submit(*args, **kwargs)
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("Connection closed by server.")
        return admitted


def _failing(enqueuer: Enqueuer, kind: type[Enqueuer] = FailingOnce) -> Enqueuer:
    return kind(enqueuer.generations, enqueuer.queue, enqueuer.same_server)


BODY = {"prompt": "echo:hi", "background": True}


async def test_a_failure_after_the_claim_releases_the_idempotency_key(redis_url: str, tmp_path: Path) -> None:
    async with running_api(_settings(redis_url, tmp_path)) as (client, services):
        services.enqueuer = _failing(services.enqueuer)
        headers = {"Idempotency-Key": "order-1"}
        failed = await client.post("/v1/generations", json=BODY, headers=headers)
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "redis_unavailable"

        retried = await client.post("/v1/generations", json=BODY, headers=headers)
        assert retried.status_code == 202, retried.text  # a new generation, not 409 for the key's lifetime
        again = await client.post("/v1/generations", json=BODY, headers=headers)
        assert (again.status_code, again.json()["id"]) == (200, retried.json()["id"])


async def test_a_lost_answer_after_the_generation_was_created_keeps_the_key(redis_url: str, tmp_path: Path) -> None:
    async with running_api(_settings(redis_url, tmp_path)) as (client, services):
        services.enqueuer = _failing(services.enqueuer, AnswerLostOnce)
        headers = {"Idempotency-Key": "order-2"}
        assert (await client.post("/v1/generations", json=BODY, headers=headers)).status_code == 503
        retried = await client.post("/v1/generations", json=BODY, headers=headers)
        # Attached to the generation the first request did create: no second one.
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "queued"
        listed = (await client.get("/v1/generations")).json()
        assert [g["id"] for g in listed["items"]] == [retried.json()["id"]]


async def test_the_429_path_releases_the_key_too(redis_url: str, tmp_path: Path) -> None:
    async with running_api(_settings(redis_url, tmp_path, max_concurrent_anonymous=1)) as (client, _):
        assert (await client.post("/v1/generations", json=BODY)).status_code == 202
        limited = await client.post("/v1/generations", json=BODY, headers={"Idempotency-Key": "k"})
        assert limited.status_code == 429
        other_body = await client.post(
            "/v1/generations", json={**BODY, "prompt": "other"}, headers={"Idempotency-Key": "k"}
        )
        assert other_body.status_code == 429, "the key must be free again (not a 409 for a different body)"


@pytest.mark.parametrize("auth", [False, True])
async def test_an_idempotent_replay_returns_the_read_token_too(redis_url: str, tmp_path: Path, auth: bool) -> None:
    settings = _settings(redis_url, tmp_path, api_keys=[KEY] if auth else [])
    headers = {"Idempotency-Key": "browser-1", **({"Authorization": f"Bearer {KEY}"} if auth else {})}
    async with running_api(settings) as (client, _):
        first = await client.post("/v1/generations", json=BODY, headers=headers)
        replay = await client.post("/v1/generations", json=BODY, headers=headers)
        assert (first.status_code, replay.status_code) == (202, 200)
        token = first.json()["token"]
        assert token and replay.json()["token"] == token
        assert replay.json()["events_url"] == first.json()["events_url"]
        assert replay.headers["x-generation-token"] == token
        # The token works on its own, as a browser's EventSource would use it (no Authorization header).
        status = await client.get(f"{first.json()['url']}?token={token}")
        assert status.status_code == 200 and status.json()["id"] == first.json()["id"]


async def test_read_tokens_differ_per_generation_and_per_caller(redis_url: str, tmp_path: Path) -> None:
    settings = _settings(redis_url, tmp_path, api_keys=[KEY, "second-caller-key"])
    async with running_api(settings) as (client, _):
        tokens = set()
        for key, idempotency in ((KEY, "a"), (KEY, "b"), ("second-caller-key", "a"), (KEY, None)):
            headers = {"Authorization": f"Bearer {key}", **({"Idempotency-Key": idempotency} if idempotency else {})}
            tokens.add((await client.post("/v1/generations", json=BODY, headers=headers)).json()["token"])
        assert len(tokens) == 4


async def test_anonymous_callers_have_their_own_limit(redis_url: str, tmp_path: Path) -> None:
    settings = _settings(redis_url, tmp_path, max_concurrent_per_caller=1, max_concurrent_anonymous=3)
    async with running_api(settings) as (client, _):
        codes = [(await client.post("/v1/generations", json=BODY)).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]


async def test_a_key_holder_keeps_the_per_caller_limit(redis_url: str, tmp_path: Path) -> None:
    settings = _settings(redis_url, tmp_path, api_keys=[KEY], max_concurrent_per_caller=1, max_concurrent_anonymous=3)
    async with running_api(settings) as (client, _):
        post: Callable[[], Any] = lambda: client.post(  # noqa: E731
            "/v1/generations", json=BODY, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert [(await post()).status_code for _ in range(2)] == [202, 429]


@pytest.mark.parametrize("max_tokens", [101, 1_000_001, 10**30])
async def test_max_tokens_over_the_limit_is_one_code_whatever_the_value(
    redis_url: str, tmp_path: Path, max_tokens: int
) -> None:
    async with running_api(_settings(redis_url, tmp_path, max_tokens_limit=100)) as (client, _):
        response = await client.post("/v1/generations", json={**BODY, "max_tokens": max_tokens})
        assert (response.status_code, response.json()["error"]["code"]) == (422, "max_tokens_too_large")
        assert response.json()["error"]["message"] == "max_tokens may be at most 100."
