"""Shared by the scenarios: the load's shape, running many streams at once, what they got, one measured round."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procfs import Sampler, command_calls, median, percentile
from bench.sseclient import Request, Stream, fetch
from bench.stack import BenchStack, host_port

Result = dict[str, Any]
# Connections being opened at once: far below uvicorn's accept backlog (2048), so no SYN is ever dropped.
CONNECT_LIMIT = 256
# perf_counter (the client's event times) -> wall clock (the fake upstream's send stamps, clock=1).
WALL_OFFSET = time.time() - time.perf_counter()
# Case-sensitive: log levels are upper case, and "error" is also an ordinary word in the relay's info lines.
_PROBLEM = re.compile(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b|Exception|Too many open files")
_VARYING = re.compile(r"gen_[0-9a-f]+|\d+")


@dataclass(frozen=True)
class Shape:
    """One stream's answer from the fake upstream: `chunks` pieces (tokens) of `size` characters, `delay_ms`
    apart; with `clock`, each piece is the time it was sent (18 characters), for token lateness."""

    chunks: int = 50
    size: int = 8
    delay_ms: int = 20
    clock: bool = False

    @property
    def chars(self) -> int:
        return self.chunks * self.size

    @property
    def model(self) -> str:
        return f"demo@chunk={self.size},delay_ms={self.delay_ms}" + (",clock=1" if self.clock else "")

    def post(self, url: str, **extra: Any) -> Request:
        """A relay (or DIRECT) request for this answer; ASCII text, so characters = bytes."""
        text = ("abcdefghijklmnopqrstuvwxyz0123456789" * (self.chars // 36 + 1))[: self.chars]
        host, port = host_port(url)
        return Request.post_json(
            host, port, "/v1/generations", {"prompt": f"echo:{text}", "model": self.model, **extra}
        )

    def memory(self, url: str, gate: int = 0) -> Request:
        """The bare Starlette baseline's request for the same events (`gate`: held until POST /open?gate=N)."""
        host, port = host_port(url)
        return Request.get(host, port, f"/stream?n={self.chunks}&size={self.size}&delay_ms={self.delay_ms}&gate={gate}")


def scale_overrides(streams: int) -> dict[str, str]:
    """Capacity settings, not tuning: the defaults cap one worker at 500 jobs and one caller at 100 unfinished
    generations, and the benchmark is one anonymous caller driving one worker at the stated concurrency."""
    return {"WORKER_MAX_JOBS": str(max(500, streams)), "MAX_CONCURRENT_PER_CALLER": str(max(100, streams * 2))}


async def run_batch(requests: list[Request], *, max_seconds: float, record_times: bool = True) -> list[Stream]:
    """All requests at once (connections opened CONNECT_LIMIT at a time), each to its end or its deadline."""
    limit = asyncio.Semaphore(CONNECT_LIMIT)
    streams = [Stream(record_times=record_times) for _ in requests]
    await asyncio.gather(
        *(fetch(r, s, max_seconds=max_seconds, connect_limit=limit) for r, s in zip(requests, streams, strict=True))
    )
    return streams


async def wait_until(done: Callable[[], bool], within_s: float, interval: float = 0.1) -> None:
    """Polls `done` until it is true or `within_s` seconds have passed (then the caller measures what it has).
    A poll: the condition spans thousands of streams' counters, which signal nothing."""
    deadline = time.monotonic() + within_s
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(interval)


def errors(streams: list[Stream], expected_chars: int, limit: int = 5) -> dict[str, int]:
    """Why streams failed, the most common reasons first."""
    reasons: Counter[str] = Counter()
    for s in streams:
        if s.error is not None:
            reasons[s.error[:160]] += 1
        elif s.terminal == "error":
            reasons[f"error event: {(s.terminal_data or {}).get('code')}"] += 1
        elif s.content_chars != expected_chars:
            reasons[f"wrong length: {s.content_chars} of {expected_chars} chars"] += 1
    return dict(reasons.most_common(limit))


def summarize(streams: list[Stream], shape: Shape, since: float | None = None) -> Result:
    """Rates, TTFT and token timing of streams run at once; `since`: all started at that gate (else each at
    its connect). Tokens count the final texts: content discarded by a `reset` is not throughput."""
    starts = [since] if since is not None else [s.started for s in streams if s.started is not None]
    ends = [s.terminal_at or s.last_event_at for s in streams if s.last_event_at is not None]
    wall = max(ends) - min(starts) if starts and ends else float("nan")
    events = sum(s.content_events for s in streams)
    tokens = sum(s.content_chars for s in streams) / shape.size
    ttfts = [(s.first_content_at - (since or s.started or 0)) * 1000 for s in streams if s.first_content_at]
    # Gap between consecutive content events of a stream minus the pacing: k tokens in one event show as ~k gaps.
    gaps = [(b - a) * 1000 - shape.delay_ms for s in streams for a, b in itertools.pairwise(s.content_times)]
    late = lateness_ms(streams) if shape.clock else []
    good = sum(1 for s in streams if s.ok and s.content_chars == shape.chars)
    return {
        "streams": len(streams),
        "ok": good,
        "failed": len(streams) - good,
        "errors": errors(streams, shape.chars),
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "events_per_s": events / wall if wall > 0 else float("nan"),
        "tokens_per_event": tokens / events if events else float("nan"),
        "ttft_ms_p50": percentile(ttfts, 50),
        "ttft_ms_p99": percentile(ttfts, 99),
        "gap_ms_p99": percentile(gaps, 99),
        "lateness_ms_p50": percentile(late, 50),
        "lateness_ms_p99": percentile(late, 99),
    }


def lateness_ms(streams: list[Stream]) -> list[float]:
    """Per token: from the fake upstream sending it (the stamp it carries) to this client receiving it."""
    return [
        (at + WALL_OFFSET - float(stamp)) * 1000
        for s in streams
        for at, text in zip(s.content_times, s.content_texts, strict=True)
        for stamp in text.split(";")[:-1]
    ]


async def measure(stack: BenchStack, requests: list[Request], shape: Shape, max_seconds: float) -> Result:
    """One round of streams at once through the stack: the summary, Redis commands per token (INFO commandstats
    of the stack's own servers), and per process CPU µs per token, % of a core and Redis connections."""
    pids = {**stack.pids(), "client": os.getpid()}
    calls = command_calls(stack.redis_urls)
    async with profiled(stack, ("api", "worker")), Sampler(pids, stack.redis_ports) as sampler:
        streams = await run_batch(requests, max_seconds=max_seconds)
    summary = summarize(streams, shape)
    tokens = max(1.0, summary["tokens"])
    summary["commands_per_token"] = (command_calls(stack.redis_urls) - calls) / tokens
    summary["cpu_us_per_token"] = {name: 1e6 * cpu / tokens for name, cpu in sampler.cpu.items()}
    summary["cpu_pct"] = {name: 100 * cpu / sampler.elapsed for name, cpu in sampler.cpu.items()}
    summary["runqueue_pct"] = {name: 100 * wait / sampler.elapsed for name, wait in sampler.waited.items()}
    summary["redis_connections"] = {name: n for name, n in sampler.connections.items() if n}
    # What serving costs: APIs, workers, Redis and nginx; not the load generator or the fake provider.
    serving = (cpu for name, cpu in sampler.cpu.items() if name not in ("client", "upstream", "memory", "direct"))
    summary["serving_cpu_us_per_token"] = 1e6 * sum(serving) / tokens
    return summary


def medians(rounds: list[Result], *keys: str) -> Result:
    return {key: median([r[key] for r in rounds]) for key in keys}


def table(title: str, header: list[str], rows: list[list[Any]]) -> Result:
    return {"title": title, "header": header, "rows": rows}


def target(name: str, measured: Any, passed: bool) -> list[Any]:
    return [name, measured, "PASS" if passed else "FAIL"]


def log_problems(stack: BenchStack, limit: int = 6) -> dict[str, list[str]]:
    """Suspicious log lines per process, one example per kind with its count (ids and numbers do not make a
    new kind); processes that exited on their own."""
    found: dict[str, list[str]] = {}
    for name, process in stack.processes.items():
        kinds: Counter[str] = Counter()
        examples: dict[str, str] = {}
        with contextlib.suppress(OSError), process.log.open(errors="replace") as handle:
            for line in filter(_PROBLEM.search, handle):
                kind = _VARYING.sub("N", line.strip())
                kinds[kind] += 1
                examples.setdefault(kind, line.strip()[:300])
        if kinds:
            found[name] = [f"{count} x {examples[kind]}" for kind, count in kinds.most_common(limit)]
        if process.popen.poll() is not None:
            found.setdefault(name, []).append(f"exited with {process.popen.returncode}")
    return found


@contextlib.asynccontextmanager
async def profiled(stack: BenchStack, names: tuple[str, ...]) -> AsyncIterator[None]:
    """With BENCH_PROFILE=1, py-spy samples the named processes meanwhile, into bench/out/logs/<scenario>/
    <name>-<n>.txt as collapsed stacks (one line per stack, with its count: grep or a flame graph tool)."""
    if not os.environ.get("BENCH_PROFILE"):
        yield
        return
    installed = Path(sys.executable).parent / "py-spy"
    spies = []
    for name in (n for n in names if n in stack.processes):
        output = stack.logdir / f"{name}-{len(list(stack.logdir.glob(f'{name}-*.txt')))}.txt"
        command = [str(installed) if installed.exists() else "py-spy", "record", "--pid", str(stack.pid(name))]
        command += ["--rate", "200", "--nonblocking", "--format", "raw", "--output", str(output)]
        spies.append(await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL))
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await asyncio.wait_for(spy.wait(), 60)


def progress(message: str) -> None:
    print(f"[bench]   {message}", flush=True)
