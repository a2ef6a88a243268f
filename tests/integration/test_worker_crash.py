"""A worker SIGKILLed after the last token, before any hook: another worker finishes the generation, the
client gets `reset` and the complete answer, the record exists once and on_complete runs once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.hooks import KILL_MARKER
from tests.support.jobs import job_ended
from tests.support.sse import assert_well_formed, read_events, text_of
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
def crash_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Its own stack (own queue): the crashing hook must never hit the shared stack's worker.
    with running_stack(redis_url, tmp_path_factory.mktemp("crash-stack")) as stack:
        stack.start_worker("worker-2")
        yield stack


@pytest.fixture
async def crash_client(crash_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with crash_stack.client() as client:
        yield client


async def test_generation_survives_a_worker_killed_between_last_token_and_hook(
    crash_client: httpx.AsyncClient, crash_stack: Stack
) -> None:
    text = "survives a crash: 一二三 " * 4 + KILL_MARKER
    body = {
        "prompt": f"echo:{text}",
        "model": "demo@chunk=8,delay_ms=5",
        "on_content": "kill_worker_once",
        "on_complete": "record_completion",
    }
    async with crash_client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        events = await read_events(response)

    logdir = Path(crash_stack.env["SSE_RELAY_TEST_HOOK_DIR"])
    killed_pid = int((logdir / "killed").read_text())
    dead = [p for p in crash_stack.processes.values() if p.popen.pid == killed_pid]
    assert len(dead) == 1 and dead[0].popen.poll() is not None, "the first worker must really have died"

    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert kinds.count("reset") == 1
    assert kinds[-1] == "done"
    assert events[kinds.index("reset")].data["data"]["attempt"] == 2
    assert text_of(events) == text
    # The first attempt died after its last token arrived (the hook saw the marker); what it had published,
    # possibly short of a last coalesced piece, is a prefix of the answer that `reset` tells clients to drop.
    before_crash = "".join(e.data["data"] for e in events[: kinds.index("reset")] if e.type == "content")
    assert before_crash and text.startswith(before_crash)

    completions = logdir / "completions.log"
    deadline = time.monotonic() + 10
    while not completions.exists() or generation_id not in completions.read_text():
        assert time.monotonic() < deadline, "on_complete never ran"
        await asyncio.sleep(0.05)
    # The hook's outcome is recorded and the job that ran it has ended: no second run can follow.
    url = f"/v1/generations/{generation_id}"
    while (view := (await crash_client.get(url)).json())["on_complete"]["status"] != "ok":
        assert time.monotonic() < deadline, f"on_complete's outcome was never recorded: {view['on_complete']}"
        await asyncio.sleep(0.05)
    assert view["on_complete"]["attempts"] == 1
    await job_ended(crash_stack.env["REDIS_URL"], generation_id)
    runs = [line for line in completions.read_text().splitlines() if line.startswith(generation_id)]
    assert runs == [f"{generation_id} {len(text)} done 2"]

    view = (await crash_client.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["text"]) == ("done", text)
    assert view["on_complete"]["status"] == "ok" and view["on_complete"]["attempts"] == 1
