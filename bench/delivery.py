"""The `delivery` scenario: what one API process delivers through Redis, fed by bench/producer.py (not the
worker), against the bare Starlette baseline serving the same events; every client connected before a start gate."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable

from bench.common import (
    CONNECT_LIMIT,
    Result,
    Shape,
    log_problems,
    medians,
    progress,
    summarize,
    table,
    target,
    wait_until,
)
from bench.procfs import Sampler
from bench.sseclient import Request, Stream, fetch
from bench.stack import ROOT, BenchStack, bench_stack, host_port
from shared.config import Settings
from shared.ids import new_generation_id
from shared.jobs import StoredRequest
from shared.redis_client import streams_client
from shared.state import Generations

ANONYMOUS_CALLER = "anonymous"  # the caller every request is when auth is off (api.deps.ANONYMOUS)
MODES = {"paced": (Shape(50, 8, 20), 1), "max": (Shape(200, 8, 0), 10)}  # shape, events per producer call


async def _gated(
    stack: BenchStack, requests: list[Request], name: str, go: Callable[[], Awaitable[None]]
) -> tuple[float, list[Stream], float]:
    """Connects every request, then opens the gate (`go`) and measures from there: rate, server CPU per event."""
    limit = asyncio.Semaphore(CONNECT_LIMIT)
    streams = [Stream(record_times=True) for _ in requests]
    tasks = [
        asyncio.ensure_future(fetch(r, s, max_seconds=300, connect_limit=limit))
        for r, s in zip(requests, streams, strict=True)
    ]
    await wait_until(lambda: all(s.headers_at is not None or s.ended is not None for s in streams), 120)
    await asyncio.sleep(0.5)  # the hub's readers have every key before the first event
    async with Sampler({name: stack.pid(name)}, stack.redis_ports) as sampler:
        gate = time.perf_counter()
        await go()
        await asyncio.gather(*tasks)
    return sampler.cpu[name], streams, gate


async def _relay_round(stack: BenchStack, shape: Shape, per_call: int, n: int, tag: str) -> Result:
    ids = await _create_generations(stack, n)
    (ids_file := stack.logdir / f"ids-{tag}.json").write_text(json.dumps(ids))
    out_file = stack.logdir / f"producer-{tag}.json"
    args = ["--ids", ids_file, "--out", out_file, "--events", shape.chunks, "--size", shape.size]
    args += ["--delay-ms", shape.delay_ms, "--per-call", per_call]
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.producer", *map(str, args), cwd=ROOT, env=stack.env, stdin=-1, stdout=-1
    )
    assert producer.stdin is not None and producer.stdout is not None
    try:
        if (await asyncio.wait_for(producer.stdout.readline(), 60)).strip() != b"ready":
            raise RuntimeError("the producer did not start")
        host, port = host_port(stack.api_url)
        requests = [Request.get(host, port, f"/v1/generations/{i}/events") for i in ids]

        async def go() -> None:
            assert producer.stdin is not None
            producer.stdin.write(b"go\n")
            await producer.stdin.drain()

        cpu, streams, gate = await _gated(stack, requests, "api", go)
        await asyncio.wait_for(producer.wait(), 60)
    finally:
        if producer.returncode is None:
            producer.kill()
            await producer.wait()
    return {**summarize(streams, shape, gate), "server_cpu_s": cpu, "producer": json.loads(out_file.read_text())}


async def _memory_round(stack: BenchStack, shape: Shape, n: int, gate: int) -> Result:
    url = stack.urls["memory"]

    async def go() -> None:
        host, port = host_port(url)
        await fetch(Request.post_json(host, port, f"/open?gate={gate}", {}), keep_body=True)

    cpu, streams, started = await _gated(stack, [shape.memory(url, gate)] * n, "memory", go)
    return {**summarize(streams, shape, started), "server_cpu_s": cpu}


async def _create_generations(stack: BenchStack, n: int) -> list[str]:
    """n generations created and claimed (attempt 1, running) with the service's own code, as the API and the
    worker would; the producer then writes their events."""
    settings = Settings(redis_url=stack.env["REDIS_URL"], key_prefix=stack.prefix)
    client = streams_client(settings, max_connections=8)
    generations = Generations(client, settings)
    request = StoredRequest(messages=[{"role": "user", "content": "bench"}], model="demo")
    ids = [new_generation_id() for _ in range(n)]

    async def one(generation_id: str) -> None:
        await generations.create(generation_id, request, {}, ANONYMOUS_CALLER)
        if (await generations.claim(generation_id)).outcome != "ok":
            raise RuntimeError(f"claim of {generation_id} failed")

    try:
        for start in range(0, n, 100):
            await asyncio.gather(*(one(i) for i in ids[start : start + 100]))
    finally:
        await client.aclose()
    return ids


def _per_event(result: Result) -> float:
    events = result["tokens"] / max(1e-9, result["tokens_per_event"])
    return float(1e6 * result["server_cpu_s"] / max(1.0, events))


async def delivery(n: int, rounds: int) -> Result:
    """Two modes: paced like the other scenarios, and as fast as each side can go; medians of the rounds."""
    modes, rows, gate = {}, [], 0
    with bench_stack("delivery", workers=0, baselines=("memory",)) as stack:
        for name, (shape, per_call) in MODES.items():
            pairs = []
            for index in range(rounds):
                gate += 1
                base = await _memory_round(stack, shape, n, gate)
                relay = await _relay_round(stack, shape, per_call, n, f"{name}{index}")
                pairs.append({"baseline": base, "relay": relay, "ratio": relay["events_per_s"] / base["events_per_s"],
                              "cpu_ratio": _per_event(base) / _per_event(relay)})  # fmt: skip
                progress(f"delivery {name} round {index + 1}: {pairs[-1]['ratio']:.1%} of the baseline's events/s")
            modes[name] = {"rounds": pairs, **medians(pairs, "ratio", "cpu_ratio")}
            api, memory = (sorted(_per_event(p[k]) for p in pairs)[len(pairs) // 2] for k in ("relay", "baseline"))
            rows.append(
                [name, shape.chunks, shape.delay_ms, modes[name]["ratio"], modes[name]["cpu_ratio"], api, memory]
            )
        problems = log_problems(stack)
    header = ["mode", "events", "delay ms", "events/s vs bare", "server CPU ratio", "API µs/event", "bare µs/event"]
    ratio = modes["max"]["ratio"]
    return {
        "modes": modes,
        "log_problems": problems,
        "tables": [table(f"delivery: {n} streams, one API process, medians of {rounds} round(s)", header, rows)],
        "targets": [
            target(
                "one API process delivers >= 60 % of bare Starlette's events/s (`delivery`, max rate)",
                f"{ratio:.1%}",
                ratio >= 0.6,
            )
        ],
    }
