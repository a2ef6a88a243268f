"""No secret anywhere: the provider key never reaches an event, a log line, or any Redis key or value."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.scan import redis_dump
from tests.support.sse import read_events
from tests.support.stack import Stack

# The fake provider echoes the caller's Authorization header in its 401/403 messages, as hostile as it gets.
HOSTILE = ["status-401", "status-403", "status-500@retry_after_ms=10", "cut", "malformed", "demo"]


async def test_provider_key_appears_in_no_event_log_or_redis_value(client: httpx.AsyncClient, stack: Stack) -> None:
    secret = stack.secret
    wire: list[str] = []
    for model in HOSTILE:
        async with client.stream("POST", "/v1/generations", json={"prompt": "echo:hi", "model": model}) as response:
            wire.append((await response.aread()).decode())
        generation_id = response.headers["x-generation-id"]
        async with client.stream("GET", f"/v1/generations/{generation_id}/events") as replay:
            events = await read_events(replay)
            wire += [str(e.data) for e in events]
        wire.append((await client.get(f"/v1/generations/{generation_id}")).text)

    assert any("upstream_auth" in w for w in wire), "the hostile 401 scenario must have run"
    assert not [w for w in wire if secret in w], "the provider key reached a client"

    logs = "\n".join(
        p.log.read_text(errors="replace") for name, p in stack.processes.items() if name in ("api", "worker")
    )
    assert "upstream_auth" in logs, "the worker must have logged the failure it is being checked for"
    assert secret not in logs
    assert "Bearer sk-" not in logs

    dump = await redis_dump(stack.env["REDIS_URL"])
    assert stack.prefix.encode() in dump, "the scan must see this stack's keys"
    assert b"arq:result:" in dump, "arq results must be part of the scan"
    assert secret.encode() not in dump

    database = stack.env["DATABASE_URL"].split(":///", 1)[1]
    stored = b"".join(p.read_bytes() for p in Path(database).parent.glob(Path(database).name + "*"))
    assert b"upstream_auth" in stored, "the result store must hold the generations checked here"
    assert secret.encode() not in stored, "the provider key reached the result store"
