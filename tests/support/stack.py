"""Starts the real processes (fake upstream, `sse-relay worker`, uvicorn API) for integration tests and stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from cli.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
# The `sse-relay worker` command (cli/main.py), and the same settings run by arq's own command line.
WORKER = ["-m", "cli.main", "worker"]
PLAIN_ARQ_WORKER = ["-m", "arq", "worker.main.WorkerSettings"]
# Environment a test stack must not inherit (a developer's real key or endpoint).
_SCRUB = ("OPENAI_API_KEY", "DASHSCOPE_API_KEY", "OPENAI_BASE_URL", "AI_MODEL_NAME", "QWEN_MODEL_NAME",
          "SSE_RELAY_API_KEYS", "STREAMS_REDIS_URL", "CORS_ALLOW_ORIGINS", "DATABASE_URL",
          "SSE_RELAY_HOOK_MODULES", "SSE_RELAY_HOOKS", "WEBHOOK_URLS", "WEBHOOK_SECRET")  # fmt: skip


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Stack:
    """One API, one worker and one fake upstream, sharing a Redis db and a unique key prefix."""

    env: dict[str, str]
    api_url: str
    upstream_url: str
    logdir: Path
    processes: dict[str, Process] = field(default_factory=dict)
    # Worker name -> the port its Prometheus metrics are served on (each worker its own).
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def secret(self) -> str:
        return self.env["OPENAI_API_KEY"]

    @property
    def prefix(self) -> str:
        return self.env["SSE_RELAY_KEY_PREFIX"]

    def start(self, name: str, args: list[str], ready: str | None = None, env: dict[str, str] | None = None) -> Process:
        log = self.logdir / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            [sys.executable, *args], env=env or self.env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
        )
        process = Process(name, popen, log)
        self.processes[name] = process
        if ready is not None:
            wait_for(lambda: ready in log.read_text(errors="replace"), f"{name} to log {ready!r}", process)
        return process

    def start_upstream(self) -> None:
        port = int(self.upstream_url.rsplit(":", 1)[1].split("/")[0])
        self.start("upstream", ["-m", "demo.model", "--port", str(port)])
        wait_for(lambda: _get_ok(f"{self.upstream_url}/v1/models"), "the fake upstream", self.processes["upstream"])

    def start_worker(self, name: str = "worker", command: list[str] = WORKER) -> Process:
        process = self.launch_worker(name, command)
        self.wait_worker_ready(name)
        return process

    def launch_worker(self, name: str, command: list[str] = WORKER) -> Process:
        """Starts a worker without waiting for it (see `wait_worker_ready`), its metrics on a free port."""
        port = self.metrics_ports[name] = free_port()
        env = {**self.env, "WORKER_METRICS_PORT": str(port)}
        return self.start(name, command, env=env)

    def worker_metrics_url(self, name: str = "worker") -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def wait_worker_ready(self, name: str = "worker", timeout: float = 30.0) -> None:
        process = self.processes[name]
        ready = lambda: "worker ready" in process.log.read_text(errors="replace")  # noqa: E731
        wait_for(ready, f"{name} to be ready", process, timeout)

    def start_api(self) -> None:
        self.launch_api()
        self.wait_api_ready()

    def launch_api(self) -> None:
        """Starts the API without waiting for it (see `wait_api_ready`)."""
        port = self.api_url.rsplit(":", 1)[1]
        self.start("api", ["-m", "uvicorn", "api.main:app", "--port", port, "--timeout-graceful-shutdown", "3"])

    def wait_api_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: _get_ok(f"{self.api_url}/readyz"), "the API", self.processes["api"], timeout)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logdir.glob("*.log"))

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api_url, timeout=httpx.Timeout(30.0), **kwargs)


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Any, what: str, process: Process | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited early:\n{process.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def stack_env(redis_url: str, upstream_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    prefix = "t" + uuid.uuid4().hex[:10]
    env.update(
        REDIS_URL=redis_url,
        OPENAI_BASE_URL=f"{upstream_url}/v1",
        # A sentinel: the secret-hygiene tests look for it everywhere it must never be.
        OPENAI_API_KEY="sk-SENTINEL" + uuid.uuid4().hex,
        AI_MODEL_NAME="demo",
        UPSTREAM_READ_TIMEOUT_S="1.5",
        UPSTREAM_MAX_RETRIES="1",
        CANCEL_POLL_S="0.1",
        WORKER_POLL_DELAY_S="0.05",
        SSE_PING_S="1",
        SSE_READ_BLOCK_MS="1000",
        SSE_RELAY_KEY_PREFIX=prefix,
        SSE_RELAY_QUEUE_NAME=f"{prefix}:queue",
        HOOK_MAX_ATTEMPTS="2",
        # Workers started some other way must not fight over the default port; launch_worker gives each its own.
        WORKER_METRICS_PORT="0",
        JOB_LEASE_S="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@contextmanager
def running_stack(redis_url: str, logdir: Path, **overrides: str) -> Iterator[Stack]:
    upstream_url = f"http://127.0.0.1:{free_port()}"
    overrides.setdefault("DATABASE_URL", f"sqlite+aiosqlite:///{logdir / 'results.db'}")
    overrides.setdefault("SSE_RELAY_HOOK_MODULES", "tests.support.hooks,examples.story_hooks")
    overrides.setdefault("SSE_RELAY_TEST_HOOK_DIR", str(logdir))
    env = stack_env(redis_url, upstream_url, **overrides)
    stack = Stack(env, f"http://127.0.0.1:{free_port()}", upstream_url, logdir)
    try:
        stack.start_upstream()
        stack.start_worker()
        stack.start_api()
        yield stack
    finally:
        stack.stop()
