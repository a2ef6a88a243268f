"""AsyncRelayClient: the asyncio Python client, driving the same resume state machine (sse_relay._core)
as RelayClient over httpx's AsyncClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import EventSource

from sse_relay._core import (
    Backoff,
    Call,
    Event,
    Follow,
    Generation,
    Page,
    Result,
    body_of,
    error_from_response,
    give_up_or_wait,
    list_params,
)

__all__ = ["AsyncEventStream", "AsyncRelayClient"]


class _Refused(Exception):
    def __init__(self, status: int, content: bytes) -> None:
        self.status = status
        self.content = content


class AsyncEventStream:
    """The events of one generation, across reconnects; `id` is known once the service answered."""

    def __init__(self, client: AsyncRelayClient, follow: Follow) -> None:
        self._client = client
        self._follow = follow

    @property
    def id(self) -> str | None:
        return self._follow.generation_id

    async def __aiter__(self) -> AsyncIterator[Event]:
        follow = self._follow
        while not follow.over:
            try:
                async for event in self._connection(follow.request()):
                    yield event
                if follow.over:
                    return
                delay = follow.dropped(EOFError("the stream ended before its terminal event"))
            except httpx.TransportError as exc:
                delay = follow.dropped(exc)
            except _Refused as refused:
                delay = follow.refused(refused.status, refused.content)
            await asyncio.sleep(delay)

    async def _connection(self, call: Call) -> AsyncIterator[Event]:
        http = self._client.http
        async with http.stream(call.method, call.path, headers=call.headers, json=call.json) as response:
            if not self._follow.opened(response.status_code, response.headers.get("x-generation-id")):
                if not self._follow.finished:
                    raise _Refused(response.status_code, await response.aread())
                return
            async for sse in EventSource(response).aiter_sse():
                event = self._follow.accept(sse.id, sse.data)
                if event is not None:
                    yield event
                if self._follow.over:
                    return

    async def result(self) -> Result:
        """Follow to the end (if not done yet) and return the answer; RelayError for an `error` terminal."""
        async for _ in self:
            pass
        result = self._follow.result()
        if result is not None:
            return result
        assert self.id is not None
        return (await self._client.get(self.id)).result()  # 204: finished before we reconnected


class AsyncRelayClient:
    """`async with AsyncRelayClient(url, api_key=...) as relay:` start, follow, read and cancel generations."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = http or httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def __aenter__(self) -> AsyncRelayClient:
        return self

    async def __aexit__(self, *exc: object | TracebackType) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    def stream(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> AsyncEventStream:
        """Start a generation and iterate (`async for`) over its events as they arrive, reconnecting by itself."""
        create = body_of(prompt, messages, model, params)
        return AsyncEventStream(self, Follow(self.backoff, create=create, auth=self._auth))

    async def generate(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> Result:
        """Start a generation and wait for its answer, checked against `done`'s length and sha256."""
        return await self.stream(prompt, messages, model, **params).result()

    def events(self, generation_id: str, last_event_id: str | None = None) -> AsyncEventStream:
        """Follow an existing generation from `last_event_id` (exclusive), or from its start."""
        follow = Follow(self.backoff, generation_id=generation_id, last_id=last_event_id, auth=self._auth)
        return AsyncEventStream(self, follow)

    async def start(
        self,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        background: bool = True,
        **params: Any,
    ) -> str:
        """Start a generation with no client attached; -> its id."""
        body = body_of(prompt, messages, model, params) | {"background": background}
        follow = Follow(self.backoff)  # only for its Idempotency-Key: a retried POST attaches, never duplicates
        answer = await self._json("POST", "/v1/generations", body, {"Idempotency-Key": follow.idempotency_key})
        return str(answer["id"])

    async def get(self, generation_id: str) -> Generation:
        return Generation.from_json(await self._json("GET", f"/v1/generations/{generation_id}"))

    async def cancel(self, generation_id: str) -> str:
        """-> the generation's status after the request (`cancelled`, or how it had already ended)."""
        return str((await self._json("POST", f"/v1/generations/{generation_id}/cancel"))["status"])

    async def list(self, status: str | None = None, limit: int | None = None, after: str | None = None) -> Page:
        """The caller's own generations, newest first; pass `page.next` as `after` for the next page."""
        answer = await self._json("GET", "/v1/generations", params=list_params(status, limit, after))
        return Page([Generation.from_json(item) for item in answer["items"]], answer.get("next"))

    async def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                response = await self.http.request(
                    method, path, json=body, params=params, headers={**self._auth, **(headers or {})}
                )
            except httpx.TransportError as exc:
                cause: Exception = exc
            else:
                if response.is_success:
                    answer: dict[str, Any] = response.json()
                    return answer
                error = error_from_response(response.status_code, response.content)
                if not error.retryable:
                    raise error
                cause = error
            failures += 1
            await asyncio.sleep(give_up_or_wait(self.backoff, failures, cause, f"calling {method} {path}"))
