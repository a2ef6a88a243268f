"""Starts and stops what a scenario measures: Redis (or a Cluster), fake upstream, APIs, workers, baselines, nginx."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cli.embedded_redis import free_port, start_embedded_redis
from tests.support.cluster import local_cluster
from tests.support.nginx import running_nginx
from tests.support.stack import _SCRUB as SCRUB
from tests.support.stack import Stack, _get_ok, wait_for

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"  # logs and scratch databases; ignored by git
# A developer's real provider settings must never reach a benchmark process.
_SCRUB = (*SCRUB, "REDIS_URL")


# Case-sensitive: log levels are upper case, and "error" is also an ordinary word in the relay's info lines.
_PROBLEM = re.compile(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b|Exception|Too many open files")
_VARYING = re.compile(r"gen_[0-9a-f]+|\d+")
# Stack name -> process -> suspicious log lines, recorded as each stack stops (bench.run reports them).
LOG_PROBLEMS: dict[str, dict[str, list[str]]] = {}


def raise_fd_limit() -> None:
    """Soft fd limit up to the hard one; processes started afterwards inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class BenchStack(Stack):
    """A Stack with the benchmark's uvicorn options, several APIs and workers, baselines; `servers` are the
    pids of the Redis servers and nginx it started, `redis_ports` the Redis servers' ports."""

    servers: dict[str, int] = field(default_factory=dict)
    redis_ports: set[int] = field(default_factory=set)
    urls: dict[str, str] = field(default_factory=dict)  # name -> base URL of each API, baseline and proxy

    def start_server(self, name: str, app: str) -> str:
        """sse-relay's API or a baseline, with the same uvicorn options."""
        url = f"http://127.0.0.1:{(port := free_port())}"
        args = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                "--timeout-graceful-shutdown", "3", "--loop", "uvloop"]  # fmt: skip
        process = self.start(name, args, env={**self.env, "BENCH_UPSTREAM_URL": self.upstream_url})
        health = "/readyz" if app == "api.main:app" else "/healthz"
        wait_for(lambda: _get_ok(url + health), name, process, timeout=90)
        self.urls[name] = url
        return url

    def pid(self, name: str) -> int:
        return self.processes[name].popen.pid

    def pids(self) -> dict[str, int]:
        """Every process of the stack and the Redis servers: who uses the CPU."""
        return {**{n: p.popen.pid for n, p in self.processes.items()}, **self.servers}


@contextmanager
def bench_stack(
    name: str,
    *,
    apis: int = 1,
    workers: int = 1,
    baselines: tuple[str, ...] = (),
    cluster: bool = False,
    nginx: bool = False,
    overrides: dict[str, str] | None = None,
) -> Iterator[BenchStack]:
    """Starts what a scenario needs on a Redis server of its own (`cluster`: streams on a 3-master Cluster) and
    stops all of it, whatever happens. Logs land in bench/out/logs/NAME. `workers=0`: the API alone."""
    logdir = OUT / "logs" / name
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir(parents=True)
    with ExitStack() as cleanup:
        redis_port = free_port()
        server = start_embedded_redis(redis_port)
        cleanup.callback(server.wait)
        cleanup.callback(server.kill)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        upstream_url = f"http://127.0.0.1:{free_port()}"
        prefix = "bench" + uuid.uuid4().hex[:10]
        env.update(
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            OPENAI_BASE_URL=f"{upstream_url}/v1",
            OPENAI_API_KEY="sk-bench-not-a-secret",
            AI_MODEL_NAME="demo",
            DATABASE_URL=f"sqlite+aiosqlite:///{logdir / 'results.db'}",
            SSE_RELAY_KEY_PREFIX=prefix,
            SSE_RELAY_QUEUE_NAME=f"{prefix}:queue",
            # The fake upstream's pacing under load can exceed the test default; a real provider's is longer.
            UPSTREAM_READ_TIMEOUT_S="30",
            PYTHONUNBUFFERED="1",
        )
        stack = BenchStack(env, "", upstream_url, logdir)
        stack.servers["redis"] = server.pid
        stack.redis_ports.add(redis_port)
        if cluster:
            nodes = cleanup.enter_context(local_cluster(logdir / "cluster"))
            env["STREAMS_REDIS_URL"] = nodes.url
            for index, (process, port) in enumerate(zip(nodes.processes, nodes.ports, strict=True)):
                stack.servers[f"redis-node-{index + 1}"] = process.pid
                stack.redis_ports.add(port)
        env.update(overrides or {})
        cleanup.callback(stack.stop)
        if workers or "direct" in baselines:
            stack.start_upstream()
        for index in range(workers):
            stack.start_worker(_numbered("worker", index))
        for index in range(apis):
            url = stack.start_server(_numbered("api", index), "api.main:app")
            stack.api_url = stack.api_url or url
        for baseline in baselines:
            stack.start_server(baseline, f"bench.baselines:{baseline}_app")
        if nginx:
            if not any(map(shutil.which, ("nginx", "/usr/sbin/nginx"))):
                raise RuntimeError("nginx is not installed: `apt-get install nginx-light`")
            ports = [int(stack.urls[_numbered("api", i)].rsplit(":", 1)[1]) for i in range(apis)]
            (logdir / "nginx").mkdir()
            proxy = cleanup.enter_context(running_nginx(logdir / "nginx", ports))
            stack.urls["nginx"] = proxy.url
            # nginx's master only starts its worker, which does the proxying.
            workers_file = Path(f"/proc/{proxy.popen.pid}/task/{proxy.popen.pid}/children")
            stack.servers.update({f"nginx-{i + 1}": int(pid) for i, pid in enumerate(workers_file.read_text().split())})
        try:
            yield stack
        finally:
            LOG_PROBLEMS[name] = log_problems(stack)


def _numbered(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}-{index + 1}"


def log_problems(stack: BenchStack, limit: int = 6) -> dict[str, list[str]]:
    """Suspicious log lines per process, one example per kind with its count (ids and numbers do not make a
    new kind); processes that exited on their own."""
    found: dict[str, list[str]] = {}
    for name, process in stack.processes.items():
        kinds: Counter[str] = Counter()
        examples: dict[str, str] = {}
        with contextlib.suppress(OSError), process.log.open(errors="replace") as handle:
            for line in filter(_PROBLEM.search, handle):
                kinds[kind := _VARYING.sub("N", line.strip())] += 1
                examples.setdefault(kind, line.strip()[:300])
        if kinds:
            found[name] = [f"{count} x {examples[kind]}" for kind, count in kinds.most_common(limit)]
        if process.popen.poll() is not None:
            found.setdefault(name, []).append(f"exited with {process.popen.returncode}")
    return found
