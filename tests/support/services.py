"""Real services for tests: Redis at REDIS_URL if it answers, else an embedded redis-server; never a skip on CI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from cli.embedded_redis import EmbeddedRedisError, free_port, redis_answers, start_embedded_redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
TEST_DB = 13  # away from db 0, which `make run` uses


@contextmanager
def real_redis() -> Iterator[str]:
    """Yields a base URL (no db) of a real Redis server; fails loudly if none can be had."""
    configured = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    base = configured.rsplit("/", 1)[0] if configured.count("/") > 2 else configured
    if redis_answers(base):
        yield base
        return
    port = free_port()
    try:
        process = start_embedded_redis(port)
    except EmbeddedRedisError as exc:
        raise RuntimeError(
            f"No Redis answers at {configured} and the embedded redis-server could not start: {exc}"
        ) from exc
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
