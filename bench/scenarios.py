"""The scenarios: each runs sse-relay and a baseline side by side on this machine and returns plain numbers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis

from bench.procfs import (
    MonitorCounter,
    calls_delta,
    cpu_seconds,
    median,
    open_fds,
    percentile,
    redis_command_calls,
    rss_kib,
    tcp_connections,
)
from bench.sseclient import Request, Stream, fetch
from bench.stack import ROOT, BenchStack, bench_stack, host_port, redis_port
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations

Result = dict[str, Any]
# Text the fake upstream echoes back; ASCII so that characters = bytes and every chunk has the same size.
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Connections being opened at once: far below uvicorn's accept backlog (2048), so no SYN is ever dropped.
CONNECT_LIMIT = 256
# Commands the benchmark itself sends to Redis while measuring (not the relay's).
_OWN_COMMANDS = ("info", "client|list", "ping")
# Lua script invocations: one round trip each, whatever the script runs inside (commandstats counts both).
_SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
# Case-sensitive: log levels are upper case, and "error" is also an ordinary word in the relay's info lines.
_PROBLEM = re.compile(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b|Exception|exited unexpectedly|Too many open files")
_GENERATION_ID = re.compile(r"gen_[0-9a-f]{8,}")
_DIGITS = re.compile(r"\d+")
# The caller every request is when auth is off (api.deps.ANONYMOUS); the bench runs without API keys.
ANONYMOUS_CALLER = "anonymous"


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; --quick shrinks them for a smoke run."""

    quick: bool = False
    ttft_warmup: int = 20
    ttft_samples: int = 300
    ttft_repeats: int = 3
    idle_seconds: float = 20.0
    throughput_streams: int = 1000
    # One round: a relay round at 1,000 streams takes over a minute on 2 cores, and the curve repeats N=1,000.
    throughput_rounds: int = 3
    curve_levels: tuple[int, ...] = (10, 100, 1000, 5000)
    many_generations: int = 20
    many_per_generation: int = 500
    many_delay_ms: int = 5000
    chunks: int = 50
    chunk_size: int = 8
    delay_ms: int = 20
    # delivery: the API alone, fed by bench.producer (SPEC 7's "one API process delivers events").
    delivery_streams: int = 1000
    delivery_rounds: int = 5
    delivery_max_events: int = 200
    delivery_max_per_call: int = 10
    # redis_cost: a fast provider (a 4-char token every 10 ms per stream) through the worker.
    cost_streams: int = 10
    cost_chunk: int = 4
    cost_delay_ms: int = 10
    # Light load: a typical provider's pace (40 tokens/s per stream).
    light_delay_ms: int = 25
    cost_tokens: int = 300
    cost_saturated: int = 200
    # cost: worker CPU per token vs the plain SDK loop.
    cpu_streams: int = 40
    cpu_tokens: int = 500
    cpu_delay_ms: int = 5
    cpu_rounds: int = 3

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if not quick:
            return cls()
        return cls(
            quick=True,
            ttft_warmup=5,
            ttft_samples=40,
            ttft_repeats=1,
            idle_seconds=5.0,
            throughput_streams=100,
            curve_levels=(10, 100),
            many_generations=4,
            many_per_generation=100,
            many_delay_ms=1000,
            delivery_streams=100,
            delivery_rounds=1,
            cost_streams=5,
            cost_saturated=50,
            cpu_streams=50,
            cpu_tokens=300,
            cpu_rounds=1,
        )


def echo_text(chars: int) -> str:
    return (_ALPHABET * (chars // len(_ALPHABET) + 1))[:chars]


def relay_request(stack: BenchStack, text: str, chunk: int, delay_ms: int, background: bool = False) -> Request:
    payload: dict[str, Any] = {"prompt": f"echo:{text}", "model": f"demo@chunk={chunk},delay_ms={delay_ms}"}
    if background:
        payload["background"] = True
    host, port = host_port(stack.api_url)
    return Request.post_json(host, port, "/v1/generations", payload)


def memory_request(stack: BenchStack, count: int, size: int, delay_ms: int) -> Request:
    host, port = host_port(stack.memory_url)
    return Request.get(host, port, f"/stream?n={count}&size={size}&delay_ms={delay_ms}")


# Shared helpers.


@dataclass
class Batch:
    """Many streams run at once, and what they got."""

    streams: list[Stream]
    expected_chars: int
    chunk_size: int
    delay_ms: int

    def summary(self) -> Result:
        streams = self.streams
        good = [s for s in streams if s.ok and s.content_chars == self.expected_chars]
        starts = [s.started for s in streams if s.started is not None]
        # The last thing received: the last terminal event, or the last event of a stream that never ended.
        ends = [s.terminal_at or s.last_event_at for s in streams if s.last_event_at is not None]
        wall = max(ends) - min(starts) if starts and ends else float("nan")
        content_events = sum(s.content_events for s in streams)
        # Tokens of the final texts: content discarded by a `reset` was delivered but is not throughput.
        chars = sum(s.content_chars for s in streams)
        tokens = chars / self.chunk_size
        ttfts = [t * 1000 for s in streams if (t := s.ttft) is not None]
        gaps = self.token_latencies_ms()
        return {
            "streams": len(streams),
            "ok": len(good),
            "failed": len(streams) - len(good),
            "streams_with_reset": sum(1 for s in streams if s.resets),
            "errors": _error_sample(streams, self.expected_chars),
            "wall_s": wall,
            "content_events": content_events,
            "tokens": tokens,
            "events_per_s": content_events / wall if wall > 0 else float("nan"),
            "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
            "tokens_per_event": tokens / content_events if content_events else float("nan"),
            "ttft_ms_p50": percentile(ttfts, 50),
            "ttft_ms_p99": percentile(ttfts, 99),
            "token_latency_samples": len(gaps),
            "token_latency_ms_p50": percentile(gaps, 50),
            "token_latency_ms_p99": percentile(gaps, 99),
        }

    def token_latencies_ms(self) -> list[float]:
        """Gap between consecutive content events of a stream minus the configured pacing (the brief's
        definition); a coalesced event that carries k pieces shows up as a gap of about k * delay."""
        gaps: list[float] = []
        for stream in self.streams:
            times = stream.content_times
            gaps += [(b - a) * 1000 - self.delay_ms for a, b in itertools.pairwise(times)]
        return gaps


def _error_sample(streams: list[Stream], expected_chars: int, limit: int = 5) -> dict[str, int]:
    reasons: Counter[str] = Counter()
    for stream in streams:
        if stream.ok and stream.content_chars == expected_chars:
            continue
        if stream.error is not None:
            reasons[stream.error[:160]] += 1
        elif stream.terminal == "error" and stream.terminal_data is not None:
            reasons[f"error event: {stream.terminal_data.get('code')}"] += 1
        elif stream.terminal is None:
            reasons["ended without a terminal event"] += 1
        else:
            reasons[f"wrong length: {stream.content_chars} of {expected_chars} chars"] += 1
    return dict(reasons.most_common(limit))


async def run_batch(
    requests: list[Request], *, max_seconds: float, record_times: bool, connect_limit: int = CONNECT_LIMIT
) -> list[Stream]:
    """All requests at once (connections opened `connect_limit` at a time), each to its end or its deadline."""
    limit = asyncio.Semaphore(connect_limit)
    streams = [Stream(record_times=record_times) for _ in requests]
    await asyncio.gather(
        *(fetch(r, s, max_seconds=max_seconds, connect_limit=limit) for r, s in zip(requests, streams, strict=True))
    )
    return streams


class Sampler:
    """Samples processes every `interval` seconds while a phase runs: Redis connections (of `connection_pids`),
    RSS, and CPU as a delta over the phase."""

    def __init__(
        self, pids: dict[str, int], connection_pids: tuple[str, ...], redis_tcp_port: int, interval: float = 0.25
    ) -> None:
        self.pids = pids
        self.connection_pids = connection_pids
        self.port = redis_tcp_port
        self.interval = interval
        self.redis_connections: dict[str, list[int]] = {name: [] for name in pids}
        self.rss: dict[str, list[int]] = {name: [] for name in pids}
        self.cpu_start: dict[str, float] = {}
        self.cpu_end: dict[str, float] = {}
        self.started = 0.0
        self.elapsed = 0.0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                if name in self.connection_pids:
                    self.redis_connections[name].append(tcp_connections(pid, self.port))
                self.rss[name].append(rss_kib(pid))

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Sampler:
        self.started = time.monotonic()
        self.cpu_start = {name: _cpu_or_nan(pid) for name, pid in self.pids.items()}
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
        self.elapsed = time.monotonic() - self.started
        self.cpu_end = {name: _cpu_or_nan(pid) for name, pid in self.pids.items()}

    def report(self) -> Result:
        out: Result = {}
        for name in self.pids:
            conns = self.redis_connections[name]
            cpu = self.cpu_end[name] - self.cpu_start[name]
            out[name] = {
                "redis_connections_max": max(conns) if conns else None,
                "redis_connections_median": median([float(c) for c in conns]),
                "rss_mib_max": max(self.rss[name], default=0) / 1024,
                "cpu_pct_of_core": 100 * cpu / self.elapsed if self.elapsed > 0 else float("nan"),
            }
        return out


def relay_pids(stack: BenchStack) -> dict[str, int]:
    """The relay's processes, this client process and, when it runs here, the Redis server: who uses the CPU."""
    pids = {name: stack.pid(name) for name in ("api", "worker", "upstream") if stack.has(name)}
    pids["client"] = os.getpid()
    client = _redis(stack)
    try:
        server_pid = int(cast(dict[str, Any], client.info("server"))["process_id"])
    finally:
        client.close()
    if os.path.exists(f"/proc/{server_pid}/stat"):
        pids["redis-server"] = server_pid
    return pids


def _cpu_or_nan(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return float("nan")


def log_problems(stack: BenchStack, limit: int = 8) -> dict[str, list[str]]:
    """Suspicious log lines per process (the error text of anything that broke under load): one example of
    each kind, with how often that kind occurred (ids and numbers do not make a line a new kind)."""
    found: dict[str, list[str]] = {}
    for name, process in stack.processes.items():
        if not process.log.exists():
            continue
        kinds: Counter[str] = Counter()
        examples: dict[str, str] = {}
        with process.log.open(errors="replace") as handle:
            for line in handle:
                text = line.strip()
                if not _PROBLEM.search(text):
                    continue
                kind = _DIGITS.sub("N", _GENERATION_ID.sub("gen_*", text))
                kinds[kind] += 1
                examples.setdefault(kind, text[:400])
        if kinds:
            found[name] = [f"{count} x {examples[kind]}" for kind, count in kinds.most_common(limit)]
    dead = stack.check_alive()
    if dead:
        found["exited"] = dead
    return found


def _redis(stack: BenchStack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url)


# Scenarios.


async def ttft(plan: Plan) -> Result:
    """Time to first content, sequential requests, DIRECT and relay interleaved; differences of percentiles."""
    payload_text, chunk, delay_ms = "hello world", 4, 0
    with bench_stack("ttft", direct=True) as stack:
        relay = relay_request(stack, payload_text, chunk, delay_ms)
        direct_host, direct_port = host_port(stack.direct_url)
        direct = Request.post_json(
            direct_host,
            direct_port,
            "/v1/generations",
            {"prompt": f"echo:{payload_text}", "model": f"demo@chunk={chunk},delay_ms={delay_ms}"},
        )
        failures: Counter[str] = Counter()

        async def sample(request: Request, label: str) -> float | None:
            stream = await fetch(request, max_seconds=30)
            if stream.ok and stream.content_chars == len(payload_text) and stream.ttft is not None:
                return stream.ttft * 1000
            failures[f"{label}: {_error_sample([stream], len(payload_text))}"] += 1
            return None

        for _ in range(plan.ttft_warmup):
            await sample(relay, "relay")
            await sample(direct, "direct")
        repeats: list[Result] = []
        for _ in range(plan.ttft_repeats):
            relay_ms: list[float] = []
            direct_ms: list[float] = []
            # A, B, A, B...: machine noise (GC, other processes) hits both systems alike.
            for _ in range(plan.ttft_samples):
                if (value := await sample(relay, "relay")) is not None:
                    relay_ms.append(value)
                if (value := await sample(direct, "direct")) is not None:
                    direct_ms.append(value)
            repeat: Result = {"relay": _dist(relay_ms), "direct": _dist(direct_ms)}
            repeat["diff"] = {q: repeat["relay"][q] - repeat["direct"][q] for q in ("p50", "p90", "p99", "mean")}
            repeats.append(repeat)
        problems = log_problems(stack)
    return {
        "request": {"prompt": f"echo:{payload_text}", "model": f"demo@chunk={chunk},delay_ms={delay_ms}"},
        "warmup": plan.ttft_warmup,
        "samples_per_system": plan.ttft_samples,
        "repeats": repeats,
        "median": {
            system: {q: median([r[system][q] for r in repeats]) for q in ("p50", "p90", "p99", "mean")}
            for system in ("relay", "direct", "diff")
        },
        "failures": dict(failures),
        "log_problems": problems,
    }


def _dist(values: list[float]) -> Result:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else float("nan"),
        "min": min(values, default=float("nan")),
        "max": max(values, default=float("nan")),
    }


async def idle_cpu(plan: Plan) -> Result:
    """CPU of the idle stack's processes from /proc/<pid>/stat over a quiet window, as % of one core."""
    with bench_stack("idle_cpu", direct=True) as stack:
        # One generation through each system first, so lazy start-up work is not counted as idle.
        warm = await fetch(relay_request(stack, "warm up", 4, 0), max_seconds=30)
        direct_host, direct_port = host_port(stack.direct_url)
        await fetch(
            Request.post_json(direct_host, direct_port, "/v1/generations", {"prompt": "echo:warm up"}), max_seconds=30
        )
        await asyncio.sleep(3.0)
        pids = {name: stack.pid(name) for name in ("worker", "api", "upstream", "direct")}
        client = _redis(stack)
        try:
            calls_before = redis_command_calls(client)
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            await asyncio.sleep(plan.idle_seconds)
            elapsed = time.monotonic() - started
            after = {name: cpu_seconds(pid) for name, pid in pids.items()}
            calls = calls_delta(calls_before, redis_command_calls(client), _OWN_COMMANDS)
        finally:
            client.close()
        problems = log_problems(stack)
    return {
        "window_s": elapsed,
        "warm_up_ok": warm.ok,
        "cpu_pct_of_core": {name: 100 * (after[name] - before[name]) / elapsed for name in pids},
        "cpu_seconds": {name: after[name] - before[name] for name in pids},
        # Server-wide: includes any other client of the same Redis server during the window.
        "redis_commands_per_s_server_wide": sum(calls.values()) / elapsed,
        "redis_commands": calls,
        "log_problems": problems,
    }


def _scale_overrides(streams: int) -> dict[str, str]:
    """Capacity settings for `streams` concurrent generations through one worker and one anonymous caller.

    Not tuning: the defaults cap one worker at 500 jobs and one caller at 100 unfinished generations, and
    the benchmark is one caller driving one worker at the stated concurrency.
    """
    return {
        "WORKER_MAX_JOBS": str(max(500, streams)),
        "MAX_CONCURRENT_PER_CALLER": str(max(100, streams * 2)),
    }


async def _levels(name: str, plan: Plan, levels: tuple[int, ...], rounds: int) -> Result:
    """N live streams at once through the whole relay (API, worker, fake upstream) vs the bare Starlette
    baseline serving the same events from memory, level by level, round by round: rate, TTFT, Redis cost."""
    chunks, size, delay_ms = plan.chunks, plan.chunk_size, plan.delay_ms
    text = echo_text(chunks * size)
    points: list[Result] = []
    with bench_stack(name, memory=True, overrides=_scale_overrides(max(levels))) as stack:
        relay_req = relay_request(stack, text, size, delay_ms)
        memory_req = memory_request(stack, chunks, size, delay_ms)
        await run_batch([relay_req] * 20 + [memory_req] * 20, max_seconds=60, record_times=False)
        client, port, pids = _redis(stack), redis_port(stack.redis_url), relay_pids(stack)
        try:
            for n, _ in itertools.product(levels, range(rounds)):
                # Bounded: a saturated relay must not hold the suite; unfinished streams count as failed.
                max_seconds = min(300.0, 60 + n * 0.05)
                base = Batch(
                    await run_batch([memory_req] * n, max_seconds=max_seconds, record_times=True),
                    len(text),
                    size,
                    delay_ms,
                )
                calls_before = redis_command_calls(client)
                async with Sampler(pids, ("api", "worker"), port, interval=0.5) as sampler:
                    streams = await run_batch([relay_req] * n, max_seconds=max_seconds, record_times=True)
                calls = calls_delta(calls_before, redis_command_calls(client), _OWN_COMMANDS)
                relay = Batch(streams, len(text), size, delay_ms).summary()
                points.append(
                    {
                        "streams": n,
                        "baseline": base.summary(),
                        "relay": relay,
                        "processes": sampler.report(),
                        # Server-wide (INFO commandstats): other clients of a shared Redis server count too.
                        "commands_per_token": sum(calls.values()) / max(1.0, relay["tokens"]),
                        "redis_commands_top": dict(Counter(calls).most_common(10)),
                    }
                )
                ratio = relay["tokens_per_s"] / points[-1]["baseline"]["tokens_per_s"]
                progress(f"{name} {n}: relay {relay['tokens_per_s']:.0f} tok/s, {ratio * 100:.1f} % of the baseline")
                if stack.check_alive():
                    break  # a crashed process makes every later point meaningless
                await asyncio.sleep(2.0)  # finished generations' bookkeeping settles before the next round
        finally:
            client.close()
        problems = log_problems(stack)
    top = [p for p in points if p["streams"] == max(levels)]
    return {
        "chunks_per_stream": chunks,
        "chunk_chars": size,
        "delay_ms": delay_ms,
        "settings": _scale_overrides(max(levels)),
        "points": points,
        "log_problems": problems,
        "median": {
            "streams": max(levels),
            "ratio_tokens_per_s": median([p["relay"]["tokens_per_s"] / p["baseline"]["tokens_per_s"] for p in top]),
            "relay_ttft_ms_p99": median([p["relay"]["ttft_ms_p99"] for p in top]),
            "baseline_ttft_ms_p99": median([p["baseline"]["ttft_ms_p99"] for p in top]),
        },
    }


async def throughput(plan: Plan) -> Result:
    return await _levels("throughput", plan, (plan.throughput_streams,), plan.throughput_rounds)


async def curve(plan: Plan) -> Result:
    return await _levels("curve", plan, plan.curve_levels, 1)


async def _hold(
    label: str,
    requests: list[Request],
    pid: int,
    *,
    connect_deadline_s: float,
    watch_s: float,
    max_seconds: float,
    redis_tcp_port: int,
    end: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    """Opens every request, waits until each got an event, then checks that each keeps receiving while held."""
    rss_before = rss_kib(pid)
    fds_before = open_fds(pid)
    cpu_before = cpu_seconds(pid)
    limit = asyncio.Semaphore(CONNECT_LIMIT)
    streams = [Stream() for _ in requests]
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(fetch(r, s, max_seconds=max_seconds, connect_limit=limit))
        for r, s in zip(requests, streams, strict=True)
    ]
    all_connected_s: float | None = None
    deadline = started + connect_deadline_s
    next_report = started + 15
    while time.monotonic() < deadline:
        waiting = sum(1 for s in streams if s.events == 0 and s.ended is None)
        if waiting == 0:
            all_connected_s = time.monotonic() - started
            break
        if time.monotonic() > next_report:
            progress(f"{label}: {len(streams) - waiting} of {len(streams)} clients have an event")
            next_report += 15
        await asyncio.sleep(0.25)
    ramp_s = time.monotonic() - started
    cpu_ramp = cpu_seconds(pid) - cpu_before
    # Receiving = connected when the hold starts, and another event arrived during the hold.
    counts = [s.events if s.ended is None else 0 for s in streams]
    connected = sum(1 for c in counts if c > 0)
    rss_samples: list[int] = []
    fds_during = redis_during = 0
    hold_started, cpu_hold_before = time.monotonic(), cpu_seconds(pid)
    while time.monotonic() < hold_started + watch_s:
        rss_samples.append(rss_kib(pid))
        fds_during = max(fds_during, open_fds(pid))
        redis_during = max(redis_during, tcp_connections(pid, redis_tcp_port))
        await asyncio.sleep(0.5)
    cpu_hold = (cpu_seconds(pid) - cpu_hold_before) / (time.monotonic() - hold_started)
    receiving = sum(1 for s, c in zip(streams, counts, strict=True) if c > 0 and s.events > c and s.ended is None)
    rss_during = max(rss_samples, default=rss_before)
    ended_early = [s for s in streams if s.ended is not None]
    if end is not None:
        await end()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "label": label,
        "clients": len(requests),
        "connected_with_event": connected,
        "receiving_while_held": receiving,
        "failed": len(ended_early),
        "never_connected": len(requests) - connected - len(ended_early),
        "errors": _error_sample(ended_early, -1),
        "seconds_to_connect_all": all_connected_s,
        "ramp_cpu_pct_of_core": 100 * cpu_ramp / ramp_s,
        "hold_cpu_pct_of_core": 100 * cpu_hold,
        "hold_window_s": watch_s,
        "rss_mib_before": rss_before / 1024,
        "rss_mib_during": rss_during / 1024,
        "rss_kib_per_client": (rss_during - rss_before) / max(1, len(requests)),
        "fds_before": fds_before,
        "fds_during": fds_during,
        "api_redis_connections_max": redis_during,
    }


async def many_clients(plan: Plan) -> Result:
    """10,000 SSE clients held by one API process on a few slow generations; RSS per client vs MEMORY."""
    generations, per = plan.many_generations, plan.many_per_generation
    total = generations * per
    # Slow on purpose: this measures holding connections; delivery under load is what `curve` measures.
    chunk, delay_ms, pieces = 8, plan.many_delay_ms, 100
    text = echo_text(chunk * pieces)
    # Two intervals and a margin: every held client must see at least one new event.
    watch_s = 2 * delay_ms / 1000 + 2
    with bench_stack("many_clients", memory=True, overrides=_scale_overrides(generations)) as stack:
        started: list[tuple[str, str]] = []
        for _ in range(generations):
            created = await fetch(relay_request(stack, text, chunk, delay_ms, background=True), keep_body=True)
            if created.status != 202:
                raise RuntimeError(f"background POST failed: {created.error}")
            body = json.loads(created.body)
            started.append((str(body["id"]), str(body["events_url"])))
        host, port = host_port(stack.api_url)
        requests = [Request.get(host, port, events_url) for _, events_url in started for _ in range(per)]
        await asyncio.sleep(2.0)  # every generation is streaming before the clients arrive

        async def cancel_all() -> None:
            for generation_id, _ in started:
                await fetch(
                    Request.post_json(host, port, f"/v1/generations/{generation_id}/cancel", {}),
                    keep_body=True,
                    max_seconds=10,
                )

        redis_tcp_port = redis_port(stack.redis_url)
        api_pid = stack.pid("api")
        api_redis_before = tcp_connections(api_pid, redis_tcp_port)
        relay = await _hold(
            "relay",
            requests,
            api_pid,
            connect_deadline_s=180,
            watch_s=watch_s,
            max_seconds=pieces * delay_ms / 1000,
            redis_tcp_port=redis_tcp_port,
            end=cancel_all,
        )
        relay["api_redis_connections_before"] = api_redis_before
        relay["clients_per_generation"] = per
        progress(f"relay: {relay['receiving_while_held']} of {total} receiving")
        await asyncio.sleep(1.0)
        baseline = await _hold(
            "memory",
            [memory_request(stack, pieces, chunk, delay_ms)] * total,
            stack.pid("memory"),
            connect_deadline_s=180,
            watch_s=watch_s,
            max_seconds=pieces * delay_ms / 1000,
            redis_tcp_port=redis_tcp_port,
        )
        problems = log_problems(stack)
    return {
        "clients": total,
        "generations": generations,
        "pacing": f"{chunk}-char chunks every {delay_ms} ms",
        "relay": relay,
        "baseline": baseline,
        "log_problems": problems,
    }


@contextlib.asynccontextmanager
async def profiled(pid: int, output: Path) -> AsyncIterator[None]:
    """With BENCH_PROFILE=1, py-spy samples `pid` meanwhile (collapsed stacks, for flame graphs or grep)."""
    if not os.environ.get("BENCH_PROFILE"):
        yield
        return
    installed = Path(sys.executable).parent / "py-spy"
    command = [str(installed) if installed.exists() else "py-spy", "record", "--pid", str(pid), "--rate", "250"]
    command += ["--format", "raw", "--output", str(output)]
    spy = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        await asyncio.wait_for(spy.wait(), 30)
        progress(f"profile of pid {pid}: {output}")


async def _connect_all(
    requests: list[Request], record_times: bool, max_seconds: float, deadline_s: float = 120.0
) -> tuple[list[Stream], list[asyncio.Task[Stream]], float]:
    """Opens every request and waits until each has its response headers (or ended); -> streams, tasks, seconds."""
    limit = asyncio.Semaphore(CONNECT_LIMIT)
    streams = [Stream(record_times=record_times) for _ in requests]
    started = time.monotonic()
    tasks = [
        asyncio.ensure_future(fetch(r, s, max_seconds=max_seconds, connect_limit=limit))
        for r, s in zip(requests, streams, strict=True)
    ]
    while time.monotonic() < started + deadline_s:
        if all(s.headers_at is not None or s.ended is not None for s in streams):
            break
        await asyncio.sleep(0.05)
    return streams, tasks, time.monotonic() - started


def _cpu_us_per_event(sampler: Sampler, events: int) -> dict[str, float]:
    """CPU microseconds each process spent per delivered event: what a rate costs, whatever the machine's
    other load (the rate itself depends on how much of the shared cores a round got)."""
    return {
        name: (sampler.cpu_end[name] - sampler.cpu_start[name]) * 1e6 / max(1, events)
        for name in sampler.pids
        if name != "producer"
    }


def _gated_summary(streams: list[Stream], gate: float, expected_chars: int, chunk: int) -> Result:
    """Delivery after a start gate: all clients were connected, then every stream started at `gate`."""
    good = [s for s in streams if s.ok and s.content_chars == expected_chars]
    ends = [s.terminal_at or s.last_event_at for s in streams if s.last_event_at is not None]
    wall = max(ends) - gate if ends else float("nan")
    content_events = sum(s.content_events for s in streams)
    tokens = sum(s.content_chars for s in streams) / chunk
    firsts = [(s.first_content_at - gate) * 1000 for s in streams if s.first_content_at is not None]
    return {
        "streams": len(streams),
        "ok": len(good),
        "failed": len(streams) - len(good),
        "errors": _error_sample(streams, expected_chars),
        "wall_s": wall,
        "content_events": content_events,
        "tokens": tokens,
        "events_per_s": content_events / wall if wall > 0 else float("nan"),
        "tokens_per_s": tokens / wall if wall > 0 else float("nan"),
        "first_event_ms_p50": percentile(firsts, 50),
        "first_event_ms_p99": percentile(firsts, 99),
    }


async def _create_generations(stack: BenchStack, n: int) -> list[str]:
    """n generations created and claimed (attempt 1, running) with the service's own code, as the API and the
    worker would; the producer then writes their events."""
    settings = Settings(
        redis_url=stack.redis_url, key_prefix=stack.prefix, finished_ttl_s=int(stack.env["FINISHED_TTL_S"])
    )
    redis_client = streams_client(settings, max_connections=8)
    generations = Generations(redis_client, settings)
    request = StoredRequest(messages=[{"role": "user", "content": "bench"}], model="demo")
    ids = [new_generation_id() for _ in range(n)]

    async def one(generation_id: str) -> None:
        await generations.create(generation_id, request, {}, ANONYMOUS_CALLER)
        claim = await generations.claim(generation_id)
        if claim.outcome != "ok" or claim.attempt != 1:
            raise RuntimeError(f"claim of {generation_id}: {claim.outcome}")

    try:
        for start in range(0, n, 100):
            await asyncio.gather(*(one(i) for i in ids[start : start + 100]))
    finally:
        await redis_client.aclose()
    return ids


async def _relay_delivery_round(
    stack: BenchStack, pids: dict[str, int], n: int, count: int, size: int, delay_ms: int, per_call: int, tag: str
) -> Result:
    ids = await _create_generations(stack, n)
    ids_file = stack.logdir / f"ids-{tag}.json"
    out_file = stack.logdir / f"producer-{tag}.json"
    ids_file.write_text(json.dumps(ids))
    args = ["--ids", str(ids_file), "--out", str(out_file), "--events", str(count), "--size", str(size)]
    args += ["--delay-ms", str(delay_ms), "--per-call", str(per_call)]
    log = (stack.logdir / f"producer-{tag}.log").open("w")
    producer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.producer",
        *args,
        cwd=ROOT,
        env=stack.env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
    )
    try:
        assert producer.stdin is not None and producer.stdout is not None
        ready = await asyncio.wait_for(producer.stdout.readline(), 60)
        if ready.strip() != b"ready":
            raise RuntimeError(f"producer did not start: {ready!r}")
        host, port = host_port(stack.api_url)
        requests = [Request.get(host, port, f"/v1/generations/{i}/events") for i in ids]
        max_seconds = 120 + count * delay_ms / 1000
        streams, tasks, connect_s = await _connect_all(requests, delay_ms > 0, max_seconds)
        connected = sum(1 for s in streams if s.status == 200)
        await asyncio.sleep(0.5)  # the hub's readers have every key before the first event
        all_pids = {**pids, "producer": producer.pid}
        async with (
            profiled(pids["api"], stack.logdir / f"api-profile-{tag}.txt"),
            Sampler(all_pids, ("api",), redis_port(stack.redis_url)) as sampler,
        ):
            gate = time.perf_counter()
            producer.stdin.write(b"go\n")
            await producer.stdin.drain()
            await asyncio.gather(*tasks)
        await asyncio.wait_for(producer.wait(), 60)
        produced = json.loads(out_file.read_text()) if out_file.exists() else {}
    finally:
        if producer.returncode is None:
            producer.kill()
            await producer.wait()
        log.close()
    summary = _gated_summary(streams, gate, count * size, size)
    summary.update(connected=connected, connect_s=connect_s, producer=produced, processes=sampler.report())
    cost = _cpu_us_per_event(sampler, summary["content_events"])
    if produced.get("cpu_pct_of_core") is not None:
        # The producer exits before the sampler's last reading: it measures its own CPU.
        cpu_s = produced["cpu_pct_of_core"] / 100 * produced["seconds"]
        cost["producer"] = cpu_s * 1e6 / max(1, summary["content_events"])
    summary["cpu_us_per_event"] = cost
    if delay_ms:
        gaps = Batch(streams, count * size, size, delay_ms).token_latencies_ms()
        summary["token_latency_ms_p99"] = percentile(gaps, 99)
    return summary


async def _memory_delivery_round(
    stack: BenchStack, pid: int, n: int, count: int, size: int, delay_ms: int, gate_number: int
) -> Result:
    host, port = host_port(stack.memory_url)
    path = f"/stream?n={count}&size={size}&delay_ms={delay_ms}&gate={gate_number}"
    max_seconds = 120 + count * delay_ms / 1000
    streams, tasks, connect_s = await _connect_all([Request.get(host, port, path)] * n, delay_ms > 0, max_seconds)
    connected = sum(1 for s in streams if s.status == 200)
    await asyncio.sleep(0.5)
    async with Sampler({"memory": pid, "client": os.getpid()}, (), redis_port(stack.redis_url)) as sampler:
        gate = time.perf_counter()
        opened = await fetch(Request.post_json(host, port, f"/open?gate={gate_number}", {}), keep_body=True)
        if opened.status != 200:
            raise RuntimeError(f"memory gate did not open: {opened.error}")
        await asyncio.gather(*tasks)
    summary = _gated_summary(streams, gate, count * size, size)
    summary.update(connected=connected, connect_s=connect_s, processes=sampler.report())
    summary["cpu_us_per_event"] = _cpu_us_per_event(sampler, summary["content_events"])
    if delay_ms:
        gaps = Batch(streams, count * size, size, delay_ms).token_latencies_ms()
        summary["token_latency_ms_p99"] = percentile(gaps, 99)
    return summary


@dataclass(frozen=True)
class _Mode:
    mode: str
    events: int
    delay_ms: int
    per_call: int  # events per PUBLISH call of the producer


async def delivery(plan: Plan) -> Result:
    """What one API process delivers through Redis (SPEC 7): a cheap producer process, not the worker, writes
    the events; N clients read them over SSE; the MEMORY baseline serves the same events to the same client.

    Every client is connected before the first event on both systems (a start gate), so the rate is delivery,
    not connection set-up. Two modes: paced like the other scenarios, and as fast as each side can go.
    """
    n, size = plan.delivery_streams, plan.chunk_size
    modes = [
        _Mode("paced", plan.chunks, plan.delay_ms, 1),
        _Mode("max", plan.delivery_max_events, 0, plan.delivery_max_per_call),
    ]
    results: list[Result] = []
    gate_number = 0
    with bench_stack("delivery", worker=False, memory=True) as stack:
        pids = relay_pids(stack)
        # Warm-up of both servers (imports, first connections, the hub's readers).
        await _relay_delivery_round(stack, pids, 20, 5, size, 0, 1, "warmup")
        gate_number += 1
        await _memory_delivery_round(stack, stack.pid("memory"), 20, 5, size, 0, gate_number)
        for mode in modes:
            rounds: list[Result] = []
            for index in range(plan.delivery_rounds):
                gate_number += 1
                base = await _memory_delivery_round(
                    stack, stack.pid("memory"), n, mode.events, size, mode.delay_ms, gate_number
                )
                relay = await _relay_delivery_round(
                    stack, pids, n, mode.events, size, mode.delay_ms, mode.per_call, f"{mode.mode}{index}"
                )
                rounds.append(
                    {
                        "baseline": base,
                        "relay": relay,
                        "ratio_events_per_s": relay["events_per_s"] / base["events_per_s"],
                        "ratio_tokens_per_s": relay["tokens_per_s"] / base["tokens_per_s"],
                        # Server CPU per event, MEMORY's over the API's: the rate ratio if both had a core.
                        "ratio_server_cpu": base["cpu_us_per_event"]["memory"] / relay["cpu_us_per_event"]["api"],
                    }
                )
                progress(
                    f"delivery {mode.mode} round {index + 1}: memory {base['events_per_s']:.0f} ev/s, "
                    f"relay {relay['events_per_s']:.0f} ev/s ({rounds[-1]['ratio_events_per_s'] * 100:.0f} %)"
                )
            results.append(
                {
                    **dataclasses.asdict(mode),
                    "rounds": rounds,
                    "ratio_events_per_s": median([r["ratio_events_per_s"] for r in rounds]),
                    "ratio_tokens_per_s": median([r["ratio_tokens_per_s"] for r in rounds]),
                    "ratio_server_cpu": median([r["ratio_server_cpu"] for r in rounds]),
                    "api_cpu_us_per_event": median([r["relay"]["cpu_us_per_event"]["api"] for r in rounds]),
                    "memory_cpu_us_per_event": median([r["baseline"]["cpu_us_per_event"]["memory"] for r in rounds]),
                }
            )
        problems = log_problems(stack)
    return {"streams": n, "chunk_chars": size, "modes": results, "log_problems": problems}


def _token_lateness_ms(streams: list[Stream], chunk: int) -> list[float]:
    """Per token: how much later the client got it than the stream's own even schedule.

    The schedule is the straight line from the stream's first to its last token (its actual rate, so the
    upstream's timer drift cancels out), shifted so the stream's earliest token is on time. Tokens that
    waited in a coalescing window (or behind a busy process) show up late by that wait.
    """
    late: list[float] = []
    for stream in streams:
        times: list[float] = []
        for at, chars in zip(stream.content_times, stream.content_sizes, strict=True):
            times += [at] * max(1, chars // chunk)
        if len(times) < 2:
            continue
        step = (times[-1] - times[0]) / (len(times) - 1)
        offsets = [(at - times[0] - k * step) * 1000 for k, at in enumerate(times)]
        earliest = min(offsets)
        late += [offset - earliest for offset in offsets]
    return late


async def redis_cost(plan: Plan) -> Result:
    """Redis commands, tokens per event and token lateness through the whole relay, adaptive batching
    (COALESCE_MS=0) against the former fixed 150 ms window, at light load and at saturation. Commands are
    counted with MONITOR on the bench's database: sent by our processes (one round trip each, a script call
    counting once) and run inside scripts."""
    chunk, tokens = plan.cost_chunk, plan.cost_tokens
    text = echo_text(tokens * chunk)
    points: list[Result] = []
    loads = (("light", plan.cost_streams, plan.light_delay_ms), ("saturated", plan.cost_saturated, plan.cost_delay_ms))
    for (load, n, delay_ms), window in itertools.product(loads, (0, 150)):
        with bench_stack(
            f"redis_cost_{load}_{window}", overrides={**_scale_overrides(n), "COALESCE_MS": str(window)}
        ) as stack:
            request = relay_request(stack, text, chunk, delay_ms)
            await run_batch([request] * 5, max_seconds=60, record_times=False)
            host, port = host_port(stack.redis_url)
            async with MonitorCounter(host, port, int(urlsplit(stack.redis_url).path.strip("/") or 0)) as monitor:
                await asyncio.sleep(0.5)
                monitor.counting = True
                async with Sampler(relay_pids(stack), ("api", "worker"), port) as sampler:
                    streams = await run_batch([request] * n, max_seconds=300, record_times=True)
                await asyncio.sleep(0.5)  # the last commands reach the monitor
                monitor.counting = False
            problems = log_problems(stack)
        relay = Batch(streams, len(text), chunk, delay_ms).summary()
        delivered = max(1.0, relay["tokens"])
        by_client = {k: v for k, v in monitor.by_client.most_common() if k not in (*_OWN_COMMANDS, "monitor")}
        late = _token_lateness_ms(streams, chunk)
        points.append(
            {
                "load": load,
                "streams": n,
                "delay_ms": delay_ms,
                "coalesce_ms": window,
                "relay": relay,
                "client_commands_per_token": sum(by_client.values()) / delivered,
                "script_calls_per_token": sum(by_client.get(c, 0) for c in _SCRIPT_COMMANDS) / delivered,
                "commandstats_per_token": (sum(by_client.values()) + sum(monitor.by_script.values())) / delivered,
                "client_commands_top": dict(list(by_client.items())[:10]),
                "token_lateness_ms_p50": percentile(late, 50),
                "token_lateness_ms_p99": percentile(late, 99),
                "processes": sampler.report(),
                "log_problems": problems,
            }
        )
        progress(
            f"redis_cost {load} COALESCE_MS={window}: {points[-1]['client_commands_per_token']:.3f} commands/token, "
            f"{relay['tokens_per_event']:.2f} tokens/event, lateness p50 {points[-1]['token_lateness_ms_p50']:.1f} ms"
        )
    return {"chunk_chars": chunk, "tokens_per_stream": tokens, "points": points}


async def _sdk_loop(stack: BenchStack, model: str, prompt: str, streams: int) -> Result:
    command = [sys.executable, "-m", "bench.sdk_loop", f"{stack.upstream_url}/v1", model, prompt, str(streams)]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=stack.env, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    if process.returncode != 0:
        raise RuntimeError(f"bench.sdk_loop exited {process.returncode}")
    return cast(Result, json.loads(out))


async def cost(plan: Plan) -> Result:
    """Worker CPU per token vs a plain asyncio loop over the SDK's typed stream, same upstream, same run.

    Both read the same streams from the same fake upstream, alternately, round after round. The worker's
    CPU covers everything it does for a generation (job pick-up, Redis writes, the stored result); tokens are
    content chunks as the upstream sent them.
    """
    n, chunk, delay_ms, tokens = plan.cpu_streams, plan.cost_chunk, plan.cpu_delay_ms, plan.cpu_tokens
    text = echo_text(tokens * chunk)
    model = f"demo@chunk={chunk},delay_ms={delay_ms}"
    rounds: list[Result] = []
    with bench_stack("cost", overrides=_scale_overrides(n)) as stack:
        request = relay_request(stack, text, chunk, delay_ms)
        await run_batch([request] * 20, max_seconds=60, record_times=False)
        worker = {"worker": stack.pid("worker")}
        for _ in range(plan.cpu_rounds):
            sdk = await _sdk_loop(stack, model, f"echo:{text}", n)
            async with (
                profiled(worker["worker"], stack.logdir / f"worker-profile-{len(rounds)}.txt"),
                Sampler(worker, (), redis_port(stack.redis_url)) as sampler,
            ):
                batch = Batch(await run_batch([request] * n, max_seconds=300, record_times=False), len(text), chunk, 0)
            relay = batch.summary()
            cpu_s = sampler.cpu_end["worker"] - sampler.cpu_start["worker"]
            worker_rate = relay["tokens"] / cpu_s
            sdk_rate = sdk["tokens"] / sdk["cpu_s"]
            rounds.append(
                {
                    "sdk": {**sdk, "tokens_per_cpu_s": sdk_rate},
                    "worker": {
                        "tokens": relay["tokens"],
                        "ok": relay["ok"],
                        "cpu_s": cpu_s,
                        "wall_s": sampler.elapsed,
                        "tokens_per_cpu_s": worker_rate,
                        "tokens_per_event": relay["tokens_per_event"],
                    },
                    "ratio": worker_rate / sdk_rate,
                }
            )
            progress(f"cost: worker {worker_rate:.0f} tok/CPU-s, SDK loop {sdk_rate:.0f} ({rounds[-1]['ratio']:.2f}x)")
        problems = log_problems(stack)
    return {
        "streams": n,
        "model": model,
        "tokens_per_stream": tokens,
        "rounds": rounds,
        "median": {
            "worker_tokens_per_cpu_s": median([r["worker"]["tokens_per_cpu_s"] for r in rounds]),
            "sdk_tokens_per_cpu_s": median([r["sdk"]["tokens_per_cpu_s"] for r in rounds]),
            "ratio": median([r["ratio"] for r in rounds]),
        },
        "log_problems": problems,
    }


def progress(message: str) -> None:
    print(f"[bench]   {message}", flush=True)


async def scale_out(plan: Plan) -> Result:
    # Imported here: bench.scale_out builds on this module's helpers.
    from bench.scale_out import scale_out as run

    return await run(plan)


SCENARIOS: dict[str, Callable[[Plan], Awaitable[Result]]] = {
    "ttft": ttft,
    "idle_cpu": idle_cpu,
    "throughput": throughput,
    "curve": curve,
    "many_clients": many_clients,
    "delivery": delivery,
    "redis_cost": redis_cost,
    "cost": cost,
    "scale_out": scale_out,
}
