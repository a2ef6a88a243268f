"""Shared by the scenarios: the load's shape, running many streams at once, what they got and what it cost."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from bench.sseclient import Request, Stream, fetch
from bench.stack import BenchStack

Result = dict[str, Any]
# Connections being opened at once: far below uvicorn's accept backlog (2048), so no SYN is ever dropped.
CONNECT_LIMIT = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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

    @property
    def prompt(self) -> str:
        """The fake upstream echoes it back; ASCII text, so characters = bytes."""
        return "echo:" + ("abcdefghijklmnopqrstuvwxyz0123456789" * (self.chars // 36 + 1))[: self.chars]

    def post(self, url: str, **extra: Any) -> Request:
        """A relay (or DIRECT) request for this answer."""
        return Request.to(f"{url}/v1/generations", {"prompt": self.prompt, "model": self.model, **extra})

    def memory(self, url: str, gate: int = 0) -> Request:
        """The bare Starlette baseline's request for the same events (`gate`: held until POST /open?gate=N)."""
        return Request.to(f"{url}/stream?n={self.chunks}&size={self.size}&delay_ms={self.delay_ms}&gate={gate}")


def scale_overrides(streams: int) -> dict[str, str]:
    """Capacity settings, not tuning (bench/README.md): one anonymous caller drives one worker."""
    return {"WORKER_MAX_JOBS": str(max(500, streams)), "MAX_CONCURRENT_PER_CALLER": str(max(100, streams * 2))}


# What a benchmark reads about running processes (/proc) and Redis servers (INFO commandstats).


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far (utime, stime of /proc/<pid>/stat); NaN once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def runqueue_wait_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    a process that waits much more than it runs is starved by the machine's other load, not busy."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError):
            total += int(task.read_text().split()[1])
    return total / 1e9


def rss_kib(pid: int) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS:"))
    return int(line.split()[1])


def tcp_connections(pid: int, remote_ports: set[int]) -> int:
    """Established TCP connections of `pid` to any of `remote_ports`: its socket inodes found in
    /proc/<pid>/net/tcp[6]. Exact per process, unlike CLIENT LIST (which cannot name the local process)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for entry in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            if (target := os.readlink(fd_dir / entry)).startswith("socket:["):
                inodes.add(target[8:-1])
    markers = tuple(f":{port:04X} 01 " for port in remote_ports)  # remote address, then state ESTABLISHED
    count = 0
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as handle:
            count += sum(1 for line in handle if any(m in line for m in markers) and line.split()[9] in inodes)
    return count


def command_calls(ports: set[int]) -> int:
    """Commands run so far by the local Redis servers on `ports` (INFO commandstats), INFO itself excepted."""
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
            total += sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_ping"))
    return total


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Sampler:
    """While a phase runs: per process (all of the stack's and this client, or `pids`) its CPU seconds (`cpu`),
    seconds waiting for a CPU (`waited`), and peak Redis connections, RSS and open fds (sampled every 0.5 s);
    the commands the stack's Redis servers ran (`commands`); `elapsed` is the phase's wall time."""

    def __init__(self, stack: BenchStack, pids: dict[str, int] | None = None) -> None:
        self.stack, self.pids = stack, pids or {**stack.pids(), "client": os.getpid()}
        self.connections, self.rss_kib, self.fds = ({n: 0 for n in self.pids} for _ in range(3))
        self.cpu: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        self.elapsed, self.commands = 0.0, 0

    def percent(self, seconds: dict[str, float]) -> dict[str, float]:
        """Seconds per process over the phase -> % of one core."""
        return {name: 100 * value / self.elapsed for name, value in seconds.items()}

    async def _sample(self) -> None:
        while True:
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, StopIteration):
                    self.connections[name] = max(self.connections[name], tcp_connections(pid, self.stack.redis_ports))
                    self.rss_kib[name] = max(self.rss_kib[name], rss_kib(pid))
                    self.fds[name] = max(self.fds[name], len(os.listdir(f"/proc/{pid}/fd")))
            await asyncio.sleep(0.5)

    async def __aenter__(self) -> Sampler:
        self.commands = command_calls(self.stack.redis_ports)
        self._started = time.monotonic()
        self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait_s(pid) for name, pid in self.pids.items()}
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.elapsed = time.monotonic() - self._started
        self.cpu = {name: cpu_seconds(pid) - self.cpu[name] for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait_s(pid) - self.waited[name] for name, pid in self.pids.items()}
        self.commands = command_calls(self.stack.redis_ports) - self.commands


# Running streams and summing up what they got.


def launch(requests: list[Request], max_seconds: float) -> tuple[list[Stream], asyncio.Future[list[Stream]]]:
    """Starts every request (connections opened CONNECT_LIMIT at a time), each to its end or its deadline;
    -> the live streams, and a future done when all are (cancel it to stop them)."""
    limit = asyncio.Semaphore(CONNECT_LIMIT)
    streams = [Stream() for _ in requests]
    fetches = (fetch(r, s, max_seconds=max_seconds, limit=limit) for r, s in zip(requests, streams, strict=True))
    return streams, asyncio.gather(*fetches)


async def run_batch(requests: list[Request], *, max_seconds: float) -> list[Stream]:
    return await launch(requests, max_seconds)[1]


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
        elif s.terminal is not None and s.terminal["type"] == "error":
            reasons[f"error event: {s.terminal.get('code')}"] += 1
        elif s.content_chars != expected_chars:
            reasons[f"wrong length: {s.content_chars} of {expected_chars} chars"] += 1
    return dict(reasons.most_common(limit))


def summarize(streams: list[Stream], shape: Shape, since: float | None = None) -> Result:
    """Rates, TTFT and token timing of streams run at once; `since`: all started at that gate (else each at
    its connect). Tokens count the final texts: content discarded by a `reset` is not throughput."""
    starts = [since] if since is not None else [s.started for s in streams if s.started]
    ends = [s.last_event_at for s in streams if s.last_event_at is not None]
    wall = max(ends) - min(starts) if starts and ends else float("nan")
    events = sum(len(s.content_times) for s in streams)
    tokens = sum(s.content_chars for s in streams) / shape.size
    ttfts = [(s.first_content_at - (since or s.started)) * 1000 for s in streams if s.first_content_at]
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
        "events": events,
        "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "events_per_s": events / wall if wall > 0 else float("nan"),
        "tokens_per_event": tokens / events if events else float("nan"),
        **{f"ttft_ms_p{q}": percentile(ttfts, q) for q in (50, 99)},
        "gap_ms_p99": percentile(gaps, 99),
        **{f"lateness_ms_p{q}": percentile(late, q) for q in (50, 99)},
    }


def lateness_ms(streams: list[Stream]) -> list[float]:
    """Per token: from the fake upstream sending it (the stamp it carries) to this client receiving it."""
    return [
        (at + s.wall_offset - float(stamp)) * 1000
        for s in streams
        for at, text in zip(s.content_times, s.content_texts, strict=True)
        for stamp in text.split(";")[:-1]
    ]


async def measure(stack: BenchStack, requests: list[Request], shape: Shape, max_seconds: float) -> Result:
    """One round of streams at once through the stack: the summary, Redis commands per token, and per process
    CPU µs per token, % of a core (busy and waiting for a CPU) and Redis connections."""
    async with profiled(stack, ("api", "worker")), Sampler(stack) as sampler:
        streams = await run_batch(requests, max_seconds=max_seconds)
    summary = summarize(streams, shape)
    tokens = max(1.0, summary["tokens"])
    # What serving costs: APIs, workers, Redis and nginx; not the load generator or the fake provider.
    serving = (cpu for name, cpu in sampler.cpu.items() if name not in ("client", "upstream", "memory", "direct"))
    return summary | {
        "commands_per_token": sampler.commands / tokens,
        "cpu_us_per_token": {name: 1e6 * cpu / tokens for name, cpu in sampler.cpu.items()},
        "cpu_pct": sampler.percent(sampler.cpu),
        "runqueue_pct": sampler.percent(sampler.waited),
        "redis_connections": {name: n for name, n in sampler.connections.items() if n},
        "serving_cpu_us_per_token": 1e6 * sum(serving) / tokens,
    }


def medians(rounds: list[Result], *keys: str) -> Result:
    return {key: percentile([r[key] for r in rounds], 50) for key in keys}


def table(title: str, header: list[str], rows: list[list[Any]]) -> Result:
    return {"title": title, "header": header, "rows": rows}


def target(name: str, measured: Any, passed: bool) -> list[Any]:
    return [name, measured, "PASS" if passed else "FAIL"]


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
