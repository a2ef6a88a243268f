"""Starts and stops the processes a benchmark measures (fake upstream, relay API and worker, baselines)."""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httpx
import redis

from cli.embedded_redis import free_port
from tests.support.stack import Process, Stack, wait_for

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"  # logs and scratch databases; ignored by git
DEFAULT_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
REDIS_PORT_DEFAULT = 6379
# A developer's real provider settings must never reach a benchmark process.
_SCRUB = ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_BASE_URL", "AI_MODEL_NAME", "QWEN_MODEL_NAME",
          "SSE_RELAY_API_KEYS", "STREAMS_REDIS_URL", "CORS_ALLOW_ORIGINS", "DATABASE_URL",
          "SSE_RELAY_HOOK_MODULES", "SSE_RELAY_HOOKS", "REDIS_URL")  # fmt: skip


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one; processes started afterwards inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def uvicorn_args(app: str, port: int) -> list[str]:
    """The same server options for sse-relay's API and for every baseline."""
    args = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    args += ["--timeout-graceful-shutdown", "3"]
    if importlib.util.find_spec("uvloop") is not None:
        args += ["--loop", "uvloop"]
    return args


def relay_settings(redis_url: str, upstream_url: str, database_url: str) -> dict[str, str]:
    """Production defaults, except what a benchmark must pin (its own Redis keys and store, no real provider)."""
    prefix = "bench" + uuid.uuid4().hex[:10]
    return {
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": f"{upstream_url}/v1",
        "OPENAI_API_KEY": "sk-bench-not-a-secret",
        "AI_MODEL_NAME": "demo",
        "DATABASE_URL": database_url,
        "SSE_RELAY_KEY_PREFIX": prefix,
        "SSE_RELAY_QUEUE_NAME": f"{prefix}:queue",
        # The fake upstream's pacing under load can exceed the test default; a real provider's timeout is longer.
        "UPSTREAM_READ_TIMEOUT_S": "30",
        # Keys of finished generations go sooner than the day-long default: the bench shares a Redis server.
        "FINISHED_TTL_S": "900",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class BenchStack(Stack):
    """A Stack whose API runs with the benchmark's uvicorn options, plus optional baseline servers."""

    direct_url: str = ""
    memory_url: str = ""
    redis_url: str = DEFAULT_REDIS_URL

    def start_api(self) -> None:
        port = int(self.api_url.rsplit(":", 1)[1])
        self.start("api", uvicorn_args("api.main:app", port))
        wait_for(lambda: _get_ok(f"{self.api_url}/readyz"), "the API", self.processes["api"], timeout=60)

    def start_baseline(self, name: str, app: str) -> str:
        url = f"http://127.0.0.1:{free_port()}"
        env = {**self.env, "BENCH_UPSTREAM_URL": self.upstream_url}
        self.start(name, uvicorn_args(app, int(url.rsplit(":", 1)[1])), env=env)
        wait_for(lambda: _get_ok(f"{url}/healthz"), f"the {name} baseline", self.processes[name], timeout=60)
        return url

    def pid(self, name: str) -> int:
        return self.processes[name].popen.pid

    def has(self, name: str) -> bool:
        return name in self.processes

    def check_alive(self) -> list[str]:
        """Names of processes that exited on their own (a crash under load)."""
        return [name for name, process in self.processes.items() if process.popen.poll() is not None]

    def log_tail(self, name: str, chars: int = 3000) -> str:
        process: Process | None = self.processes.get(name)
        if process is None or not process.log.exists():
            return ""
        return process.log.read_text(errors="replace")[-chars:]

    def delete_keys(self, limit_s: float = 30.0) -> int:
        """Removes this stack's Redis keys (bounded in time): the server is shared."""
        client = redis.Redis.from_url(self.redis_url)
        deleted = 0
        deadline = time.monotonic() + limit_s
        try:
            # arq's own keys are not under our prefix; jobs still queued (a run cut short) would keep them a day.
            queued = cast(list[bytes], client.zrange(self.env["SSE_RELAY_QUEUE_NAME"], 0, -1))
            for start in range(0, len(queued), 1000):
                ids = [job_id.decode() for job_id in queued[start : start + 1000]]
                kinds = ("job", "in-progress", "retry", "result")
                deleted += cast(int, client.unlink(*(f"arq:{kind}:{job_id}" for job_id in ids for kind in kinds)))
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += cast(int, client.unlink(*batch))
                    batch = []
                if time.monotonic() > deadline:
                    break
            if batch:
                deleted += cast(int, client.unlink(*batch))
        finally:
            client.close()
        return deleted


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def redis_port(redis_url: str) -> int:
    return urlsplit(redis_url).port or REDIS_PORT_DEFAULT


@contextmanager
def bench_stack(
    name: str,
    *,
    relay: bool = True,
    worker: bool = True,
    direct: bool = False,
    memory: bool = False,
    redis_url: str = DEFAULT_REDIS_URL,
    overrides: dict[str, str] | None = None,
) -> Iterator[BenchStack]:
    """Starts what a scenario needs and stops all of it, whatever happens; logs land in bench/out/logs/NAME.

    `worker=False`: the relay's API alone (no worker, no upstream), for a scenario that writes the streams itself.
    """
    logdir = OUT / "logs" / name
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    upstream_url = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(relay_settings(redis_url, upstream_url, f"sqlite+aiosqlite:///{logdir / 'results.db'}"))
    env.update(overrides or {})
    stack = BenchStack(env, f"http://127.0.0.1:{free_port()}", upstream_url, logdir, redis_url=redis_url)
    try:
        if (relay and worker) or direct:
            stack.start_upstream()
        if relay and worker:
            stack.start_worker()
        if relay:
            stack.start_api()
        if direct:
            stack.direct_url = stack.start_baseline("direct", "bench.baselines:direct_app")
        if memory:
            stack.memory_url = stack.start_baseline("memory", "bench.baselines:memory_app")
        yield stack
    finally:
        stack.stop()
        if relay:
            stack.delete_keys()
