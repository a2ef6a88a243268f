"""Worker SIGTERM: running generations finish within the grace period, or go back to the queue and another
worker completes them (clients get `reset`, then the whole answer)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import own_redis
from tests.support.sse import EventReader, assert_well_formed, text_of
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
def graceful_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_url, tmp_path_factory.mktemp("graceful"), WORKER_SHUTDOWN_GRACE_S="2") as stack:
        yield stack


async def test_sigterm_lets_a_short_generation_finish(graceful_stack: Stack) -> None:
    text = "f" * 20
    worker = graceful_stack.processes["worker"]
    async with (
        graceful_stack.client() as client,
        client.stream(
            "POST", "/v1/generations", json={"prompt": f"echo:{text}", "model": "demo@chunk=2,delay_ms=80"}
        ) as response,
    ):
        reader = EventReader(response)
        events = await reader.take(1)
        worker.popen.terminate()
        events += await reader.take()
    assert_well_formed(events)
    assert events[-1].type == "done" and text_of(events) == text
    assert "reset" not in [e.type for e in events]
    assert worker.popen.wait(timeout=10) == 0


async def test_sigterm_hands_a_long_generation_to_another_worker(graceful_stack: Stack) -> None:
    text = "".join(f"[{i:02d}]" for i in range(40))
    worker = graceful_stack.start_worker("worker-b")
    async with (
        graceful_stack.client() as client,
        client.stream(
            "POST", "/v1/generations", json={"prompt": f"echo:{text}", "model": "demo@chunk=4,delay_ms=150"}
        ) as response,
    ):
        reader = EventReader(response)
        events = await reader.take(2)
        worker.popen.terminate()
        stopped = time.monotonic()
        assert worker.popen.wait(timeout=10) == 0  # after the 2 s grace, not after the whole answer
        assert time.monotonic() - stopped < 6
        graceful_stack.start_worker("worker-c")
        events += await reader.take()
    assert_well_formed(events)
    kinds = [e.type for e in events]
    assert kinds.count("reset") == 1 and kinds[-1] == "done"
    assert text_of(events) == text


def test_a_worker_stopped_after_its_redis_went_away_shuts_down_cleanly(tmp_path: Path) -> None:
    """Ctrl-C on `sse-relay dev` reaches its embedded Redis too, which may exit first: the worker's close must
    still run its shutdown (exit 0, no traceback) instead of failing on arq's health-key delete."""
    with own_redis(tmp_path / "redis") as server, running_stack(server.url, tmp_path) as stack:
        worker = stack.processes["worker"]
        server.kill()
        worker.stop(timeout=30)
        log = worker.log.read_text(errors="replace")
        assert worker.popen.returncode == 0, log[-3000:]
        assert "Traceback" not in log
        assert "the health key will expire" in log
