"""SSE over a real uvicorn: keep-alive pings while idle, and server-side cleanup when a client leaves."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.support.sse import EventReader


async def _open_streams(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    match = re.search(r"^sse_relay_sse_clients (\S+)$", metrics, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


async def test_idle_stream_gets_ping_comments_and_still_completes(client: httpx.AsyncClient) -> None:
    # The provider pauses 1.3 s between chunks (under the 1.5 s idle timeout); the stack pings every 1 s.
    body = {"prompt": "echo:abcdefgh", "model": "demo@chunk=4,delay_ms=1300"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        lines = [line async for line in response.aiter_lines()]
    assert ": ping" in lines
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1].startswith('data: {"type":"done"')
    # Every event is exactly one `id:` line followed by one `data:` line (no `event:` line).
    assert not [line for line in lines if line.startswith("event:")]
    for index, line in enumerate(lines):
        if line.startswith("data: "):
            assert lines[index - 1].startswith("id: ")


async def test_client_disconnect_releases_the_server_side_stream(client: httpx.AsyncClient) -> None:
    baseline = await _open_streams(client)
    body = {"prompt": "echo:" + "y" * 300, "model": "demo@chunk=1,delay_ms=20"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        await EventReader(response).take(3)
        assert await _open_streams(client) == baseline + 1
    deadline = time.monotonic() + 5
    while await _open_streams(client) != baseline:
        assert time.monotonic() < deadline, "the API kept streaming to a client that left"
        await asyncio.sleep(0.05)
