"""Hooks the integration tests register on their workers (SSE_RELAY_HOOK_MODULES)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from shared.hooks import GenerationInfo, hook

# The crash test's marker: a piece containing it makes the worker SIGKILL itself, once.
KILL_MARKER = "⚡"


def _log(name: str, line: str) -> None:
    path = os.environ.get("SSE_RELAY_TEST_HOOK_DIR")
    if path:
        with (Path(path) / name).open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


@hook
async def record_completion(text: str, generation: GenerationInfo) -> None:
    _log("completions.log", f"{generation.id} {len(text)} {generation.status} {generation.attempt}")


@hook("always_fails")
def failing_completion(text: str, generation: GenerationInfo) -> None:
    _log("failures.log", generation.id)
    raise RuntimeError("this hook always fails")


@hook
def record_chunk(chunk: str) -> None:
    _log("chunks.log", chunk.replace("\n", "\\n"))


@hook
def kill_worker_once(chunk: str) -> None:
    """After the last token arrives (it carries the marker), the first worker dies before any hook runs."""
    flag = Path(os.environ["SSE_RELAY_TEST_HOOK_DIR"]) / "killed"
    if KILL_MARKER in chunk and not flag.exists():
        flag.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


@hook
def blocking_chunk(chunk: str) -> None:
    """A hook that hangs: notes that it started, then blocks its thread until the test releases its tag."""
    tag = chunk.split("-", 1)[0]
    _log("blocked.log", chunk)
    release = Path(os.environ["SSE_RELAY_TEST_HOOK_DIR"]) / f"release-{tag}"
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
