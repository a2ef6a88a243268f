"""The scenarios: each runs sse-relay and a baseline side by side in one run; returns numbers, tables, targets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from bench.common import (
    Result,
    Sampler,
    Shape,
    cpu_seconds,
    launch,
    measure,
    medians,
    percentile,
    progress,
    rss_kib,
    run_batch,
    scale_overrides,
    summarize,
    table,
    target,
    wait_until,
)
from bench.sseclient import Request, Stream, fetch
from bench.stack import ROOT, BenchStack, bench_stack

STANDARD = Shape()  # 50 tokens of 8 characters, 20 ms apart: a fast provider
SMALL = Shape(chunks=3, size=4, delay_ms=0)  # TTFT: the first token is all that is measured


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; --quick shrinks them for a smoke run."""

    quick: bool = False
    rounds: int = 3
    ttft_samples: int = 300
    idle_s: float = 20.0
    streams: int = 1000
    curve: tuple[int, ...] = (10, 100, 1000, 5000)
    clients: int = 10_000
    delivery_streams: int = 1000
    light: int = 10
    saturated: int = 200
    cost_streams: int = 40
    scale_streams: int = 400

    @classmethod
    def make(cls, quick: bool) -> Plan:
        return cls(True, 1, 40, 5.0, 100, (10, 100), 400, 100, 5, 50, 40, 100) if quick else cls()


def deadline_s(streams: int, shape: Shape = STANDARD) -> float:
    """A round's bound: a saturated relay must not hold the suite; unfinished streams count as failed."""
    return min(300.0, 60 + streams * 0.05 + shape.chunks * shape.delay_ms / 1000)


async def ttft_pairs(requests: dict[str, Request], samples: int, rounds: int) -> Result:
    """TTFT one request at a time, the systems alternated (machine noise hits both alike); medians of rounds."""
    for _ in range(10):  # warm-up: imports, first connections, the hub's readers
        for request in requests.values():
            await fetch(request, max_seconds=30)
    per_round = []
    for _ in range(rounds):
        values: dict[str, list[float]] = {label: [] for label in requests}
        for _ in range(samples):
            for label, request in requests.items():
                stream = await fetch(request, max_seconds=30)
                if stream.ok and stream.ttft is not None:
                    values[label].append(stream.ttft * 1000)
        per_round.append({label: {f"p{q}": percentile(v, q) for q in (50, 90, 99)} for label, v in values.items()})
    out: Result = {label: medians([r[label] for r in per_round], "p50", "p90", "p99") for label in requests}
    first = next(iter(requests))
    rows = [[label, *out[label].values(), (out[label]["p50"] - out[first]["p50"])] for label in requests]
    title = f"TTFT ms, {samples} sequential requests per system and round, medians of {rounds} round(s)"
    out["tables"] = [table(title, ["system", "p50", "p90", "p99", f"p50 - {first}"], rows)]
    out["rounds"] = per_round
    return out


async def ttft(plan: Plan) -> Result:
    with bench_stack("ttft", baselines=("direct",)) as stack:
        requests = {"direct": SMALL.post(stack.urls["direct"]), "relay": SMALL.post(stack.api_url)}
        out = await ttft_pairs(requests, plan.ttft_samples, plan.rounds)
    diffs = {(q, ms): out["relay"][q] - out["direct"][q] for q, ms in (("p50", 3), ("p99", 15))}
    out["targets"] = [
        target(f"TTFT {q}, relay - direct <= {ms} ms (`ttft`)", d, d <= ms) for (q, ms), d in diffs.items()
    ]
    return out


async def idle_cpu(plan: Plan) -> Result:
    """CPU of the idle stack's processes over a quiet window (after one generation each), as % of one core."""
    with bench_stack("idle_cpu", baselines=("direct",)) as stack:
        await fetch(SMALL.post(stack.api_url), max_seconds=30)
        await fetch(SMALL.post(stack.urls["direct"]), max_seconds=30)
        await asyncio.sleep(3.0)  # lazy start-up work is not idle
        async with Sampler(stack, stack.pids()) as idle:
            await asyncio.sleep(plan.idle_s)
    pct, per_s = idle.percent(idle.cpu), idle.commands / idle.elapsed
    rows = [[name, value] for name, value in pct.items()]
    return {
        "cpu_pct": pct,
        "redis_commands_per_s": per_s,
        "tables": [table(f"idle, {plan.idle_s:.0f} s; Redis {per_s:.1f} commands/s", ["process", "% of a core"], rows)],
        "targets": [target("idle worker <= 1 % of a core (`idle_cpu`)", pct["worker"], pct["worker"] <= 1)],
    }


_LEVEL_HEADER = ["streams", "system", "tokens/s", "ratio", "TTFT p50 ms", "TTFT p99 ms", "gap p99 ms",
                 "tokens/event", "commands/token", "worker CPU / waiting %", "API CPU / waiting %", "ok"]  # fmt: skip


async def _levels(name: str, levels: tuple[int, ...], rounds: int) -> Result:
    """N live streams at once vs bare Starlette, level by level, round by round (baseline, then relay)."""
    points, rows = [], []
    with bench_stack(name, baselines=("memory",), overrides=scale_overrides(max(levels))) as stack:
        relay_request, memory_request = STANDARD.post(stack.api_url), STANDARD.memory(stack.urls["memory"])
        await run_batch([relay_request] * 20 + [memory_request] * 20, max_seconds=60)
        for n in (n for n in levels for _ in range(rounds)):
            base = summarize(await run_batch([memory_request] * n, max_seconds=deadline_s(n)), STANDARD)
            relay = await measure(stack, [relay_request] * n, STANDARD, deadline_s(n))
            ratio = relay["tokens_per_s"] / base["tokens_per_s"]
            points.append({"streams": n, "baseline": base, "relay": relay, "ratio": ratio})
            for label, s in (("bare Starlette", base), ("sse-relay", relay)):
                # 'CPU % / runqueue wait %' over the round: a process is starved when its wait is large.
                busy = [f"{s['cpu_pct'][k]:.0f} / {s['runqueue_pct'][k]:.0f}" if k in s.get("cpu_pct", {}) else ""
                        for k in ("worker", "api")]  # fmt: skip
                rows.append([n, label, s["tokens_per_s"], f"{ratio:.1%}" if s is relay else "", s["ttft_ms_p50"],
                             s["ttft_ms_p99"], s["gap_ms_p99"], s["tokens_per_event"], s.get("commands_per_token"),
                             *busy, f"{s['ok']}/{n}"])  # fmt: skip
            progress(f"{name} {n}: relay {relay['tokens_per_s']:.0f} tokens/s, {ratio:.1%} of the baseline")
            await asyncio.sleep(2.0)  # finished generations' bookkeeping settles before the next round
    top = [p["ratio"] for p in points if p["streams"] == max(levels)]
    title = f"{name}: {STANDARD.chunks} tokens of {STANDARD.size} chars every {STANDARD.delay_ms} ms per stream"
    return {"points": points, "median_ratio": percentile(top, 50), "tables": [table(title, _LEVEL_HEADER, rows)]}


async def throughput(plan: Plan) -> Result:
    out = await _levels("throughput", (plan.streams,), plan.rounds)
    ratio = out["median_ratio"]
    name = f"end to end at {plan.streams:,} streams >= 50 % of bare Starlette's tokens/s (`throughput`, median)"
    out["targets"] = [target(name, f"{ratio:.1%}", ratio >= 0.5)]
    return out


async def curve(plan: Plan) -> Result:
    return await _levels("curve", plan.curve, 1)


async def _hold(
    stack: BenchStack, requests: list[Request], name: str, watch_s: float
) -> tuple[Result, asyncio.Future[list[Stream]]]:
    """Opens every request to `name`, each gets an event, each keeps receiving; -> numbers, running streams."""
    pid = stack.pid(name)
    rss, cpu, started = rss_kib(pid), cpu_seconds(pid), time.monotonic()
    streams, running = launch(requests, 900)
    await wait_until(lambda: all(s.events or s.ended is not None for s in streams), 180, 0.25)
    connect_s, ramp_cpu = time.monotonic() - started, cpu_seconds(pid) - cpu
    counts = [s.events if s.ended is None else 0 for s in streams]
    async with Sampler(stack, {name: pid}) as held:
        await asyncio.sleep(watch_s)
    return {
        "clients": len(requests),
        "receiving": sum(1 for s, c in zip(streams, counts, strict=True) if 0 < c < s.events and s.ended is None),
        "failed": sum(1 for s in streams if s.ended is not None),
        "seconds_to_connect_all": connect_s,
        "rss_kib_per_client": (max(rss, held.rss_kib[name]) - rss) / len(requests),
        "hold_cpu_pct": held.percent(held.cpu)[name],
        "fds": held.fds[name],
        "redis_connections": held.connections[name],
        "ramp_cpu_pct": 100 * ramp_cpu / connect_s,
    }, running


async def many_clients(plan: Plan) -> Result:
    generations = 20
    slow = Shape(chunks=100, size=8, delay_ms=5000 if not plan.quick else 1000)
    watch_s = 2 * slow.delay_ms / 1000 + 2  # every held client must see at least one new event
    with bench_stack("many_clients", baselines=("memory",), overrides=scale_overrides(generations)) as stack:
        created = [await fetch(slow.post(stack.api_url, background=True)) for _ in range(generations)]
        ids = [json.loads(c.body)["id"] for c in created]
        per = plan.clients // generations
        requests = [Request.to(f"{stack.api_url}/v1/generations/{i}/events") for i in ids for _ in range(per)]
        await asyncio.sleep(2.0)  # every generation is streaming before the clients arrive
        relay, running = await _hold(stack, requests, "api", watch_s)
        for generation_id in ids:
            await fetch(Request.to(f"{stack.api_url}/v1/generations/{generation_id}/cancel", {}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running, 30)
        progress(f"many_clients: {relay['receiving']} of {plan.clients} receiving")
        baseline, running = await _hold(stack, [slow.memory(stack.urls["memory"])] * len(requests), "memory", watch_s)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    ok = relay["receiving"] == len(requests)
    rows = [[key, relay[key], baseline[key]] for key in relay]
    return {
        "relay": relay,
        "baseline": baseline,
        "tables": [table(f"many_clients on {generations} generations", ["", "sse-relay", "bare Starlette"], rows)],
        "targets": [target(f"{len(requests):,} SSE clients on one API process, all receiving", relay["receiving"], ok)],
    }


# delivery: what one API process delivers through Redis, fed by bench/producer.py (not the worker), against the
# bare Starlette baseline serving the same events; every client connected before a start gate.
MODES = {"paced": (Shape(50, 8, 20), 1), "max": (Shape(200, 8, 0), 10)}  # shape, events per producer call


async def _gated(
    stack: BenchStack, shape: Shape, requests: list[Request], name: str, go: Awaitable[Any]
) -> tuple[Result, Any]:
    """Connects every request, then opens the gate (`go`) and measures from there, with the CPU of `name`."""
    streams, running = launch(requests, 300)
    await wait_until(lambda: all(s.headers_at is not None or s.ended is not None for s in streams), 120)
    await asyncio.sleep(0.5)  # the hub's readers have every key before the first event
    async with Sampler(stack, {name: stack.pid(name)}) as sampler:
        gate = time.perf_counter()
        opened, _ = await asyncio.gather(go, running)
    out, cpu = summarize(streams, shape, gate), sampler.cpu[name]
    return {**out, "server_cpu_s": cpu, "us_per_event": 1e6 * cpu / max(1, out["events"])}, opened


async def _relay_round(stack: BenchStack, shape: Shape, per_call: int, n: int) -> Result:
    args = map(str, [n, shape.chunks, shape.size, shape.delay_ms, per_call])
    producer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.producer", *args, cwd=ROOT, env=stack.env, stdin=-1, stdout=-1
    )
    assert producer.stdout is not None
    try:
        ids = json.loads(await asyncio.wait_for(producer.stdout.readline(), 120))  # created and claimed
        requests = [Request.to(f"{stack.api_url}/v1/generations/{i}/events") for i in ids]
        go = asyncio.wait_for(producer.communicate(b"go\n"), 360)  # then it writes, exits and prints its summary
        out, (summary, _) = await _gated(stack, shape, requests, "api", go)
    finally:
        if producer.returncode is None:
            producer.kill()
            await producer.wait()
    return {**out, "producer": json.loads(summary)}


async def delivery(plan: Plan) -> Result:
    """Two modes: paced like the other scenarios, and as fast as each side can go; medians of the rounds."""
    n, rounds, modes, rows, gate = plan.delivery_streams, plan.rounds, {}, [], 0
    with bench_stack("delivery", workers=0, baselines=("memory",)) as stack:
        url = stack.urls["memory"]
        for name, (shape, per_call) in MODES.items():
            pairs = []
            for index in range(rounds):
                gate += 1
                go = fetch(Request.to(f"{url}/open?gate={gate}", {}))
                base, _ = await _gated(stack, shape, [shape.memory(url, gate)] * n, "memory", go)
                relay = await _relay_round(stack, shape, per_call, n)
                pairs.append({"baseline": base, "relay": relay, "ratio": relay["events_per_s"] / base["events_per_s"],
                              "cpu_ratio": base["us_per_event"] / relay["us_per_event"]})  # fmt: skip
                progress(f"delivery {name} round {index + 1}: {pairs[-1]['ratio']:.1%} of the baseline's events/s")
            modes[name] = {"rounds": pairs, **medians(pairs, "ratio", "cpu_ratio")}
            api, memory = (percentile([p[k]["us_per_event"] for p in pairs], 50) for k in ("relay", "baseline"))
            rows.append(
                [name, shape.chunks, shape.delay_ms, modes[name]["ratio"], modes[name]["cpu_ratio"], api, memory]
            )
    header = ["mode", "events", "delay ms", "events/s vs bare", "server CPU ratio", "API µs/event", "bare µs/event"]
    ratio = modes["max"]["ratio"]
    name = "one API process delivers >= 60 % of bare Starlette's events/s (`delivery`, max rate)"
    return {
        "modes": modes,
        "tables": [table(f"delivery: {n} streams, one API process, medians of {rounds} round(s)", header, rows)],
        "targets": [target(name, f"{ratio:.1%}", ratio >= 0.6)],
    }


async def batching(plan: Plan) -> Result:
    """Adaptive batching (COALESCE_MS=0) vs the former fixed 150 ms window, one stack per (load, window)."""
    loads = {
        "light": (plan.light, Shape(chunks=100, size=18, delay_ms=25, clock=True)),  # a typical 40 tokens/s
        "saturated": (plan.saturated, Shape(chunks=300, size=18, delay_ms=10, clock=True)),
    }
    points: list[Result] = []
    rows: list[list[Any]] = []
    for (load, (n, shape)), window in ((load, w) for load in loads.items() for w in (0, 150)):
        overrides = {**scale_overrides(n), "COALESCE_MS": str(window)}
        with bench_stack(f"batching_{load}_{window}", overrides=overrides) as stack:
            request = shape.post(stack.api_url)
            await run_batch([request] * 5, max_seconds=60)
            relay = await measure(stack, [request] * n, shape, deadline_s(n, shape))
        points.append({"load": load, "streams": n, "coalesce_ms": window, "relay": relay})
        rows.append([load, f"{n} x {1000 // shape.delay_ms}/s", window, relay["tokens_per_event"],
                     relay["lateness_ms_p50"], relay["lateness_ms_p99"], relay["commands_per_token"],
                     relay["tokens_per_s"], f"{relay['ok']}/{n}"])  # fmt: skip
        progress(f"batching {load} COALESCE_MS={window}: {relay['tokens_per_event']:.2f} tokens/event")
    light = points[0]["relay"]["tokens_per_event"]
    header = ["load", "streams x tokens/s", "COALESCE_MS", "tokens/event", "lateness p50 ms", "lateness p99 ms",
              "Redis commands/token", "tokens/s", "ok"]  # fmt: skip
    return {
        "points": points,
        "tables": [table("batching: adaptive (0) vs fixed window (150)", header, rows)],
        "targets": [target("light load: ~1 token per event (`batching`, adaptive)", light, light <= 1.5)],
    }


async def _sdk_loop(stack: BenchStack, shape: Shape, streams: int, transport: str) -> Result:
    args = ["-m", "bench.sdk_loop", f"{stack.upstream_url}/v1", shape.model, shape.prompt, str(streams), transport]
    process = await asyncio.create_subprocess_exec(sys.executable, *args, env=stack.env, stdout=-1)
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    return cast(Result, json.loads(out))


async def cost(plan: Plan) -> Result:
    """Worker CPU per token vs the SDK loop on its default client and on aiohttp, alternately, same upstream."""
    shape = Shape(chunks=500, size=4, delay_ms=5)
    n, rounds, rows = plan.cost_streams, [], []
    with bench_stack("cost", overrides=scale_overrides(n)) as stack:
        request = shape.post(stack.api_url)
        await run_batch([request] * 20, max_seconds=60)
        for index in range(plan.rounds):
            sdk, aiohttp = [await _sdk_loop(stack, shape, n, transport) for transport in ("default", "aiohttp")]
            relay = await measure(stack, [request] * n, shape, 300)
            worker = 1e6 / relay["cpu_us_per_token"]["worker"]
            ratio, ratio_aiohttp = worker / sdk["tokens_per_cpu_s"], worker / aiohttp["tokens_per_cpu_s"]
            rounds.append({"sdk": sdk, "sdk_aiohttp": aiohttp, "relay": relay, "worker_tokens_per_cpu_s": worker,
                           "ratio": ratio, "ratio_aiohttp": ratio_aiohttp})  # fmt: skip
            rows.append([index + 1, worker, sdk["tokens_per_cpu_s"], ratio, aiohttp["tokens_per_cpu_s"], ratio_aiohttp,
                         relay["tokens_per_event"], relay["ok"]])  # fmt: skip
            progress(f"cost round {index + 1}: worker / SDK loop {ratio:.2f}, / on aiohttp {ratio_aiohttp:.2f}")
    ratio = percentile([r["ratio"] for r in rounds], 50)
    header = ["round", "worker tokens/CPU-s", "SDK loop tokens/CPU-s", "ratio", "SDK loop on aiohttp tokens/CPU-s",
              "ratio to aiohttp loop", "tokens/event", "ok"]  # fmt: skip
    return {
        "rounds": rounds,
        "median_ratio": ratio,
        "median_ratio_aiohttp": percentile([r["ratio_aiohttp"] for r in rounds], 50),
        "tables": [table(f"cost: {n} streams x {shape.chunks} tokens, `{shape.model}`", header, rows)],
        "targets": [target("worker tokens per CPU-second / plain SDK loop's >= 2 (`cost`, median)", ratio, ratio >= 2)],
    }


_LAYOUTS = {"1x1": (1, 1, False), "2x2": (2, 2, False), "2x2 cluster": (2, 2, True)}  # APIs, workers, cluster


async def scale_out(plan: Plan) -> Result:
    """The same load on each layout (1 x 1 without nginx), and the TTFT nginx adds."""
    n, layouts, rows, overhead = plan.scale_streams, {}, [], {}
    for name, (apis, workers, cluster) in _LAYOUTS.items():
        with bench_stack(f"scale_out_{name.replace(' ', '_')}", apis=apis, workers=workers, cluster=cluster,
                         nginx=apis > 1, overrides=scale_overrides(n)) as stack:  # fmt: skip
            request = STANDARD.post(stack.urls.get("nginx", stack.api_url))
            await run_batch([request] * 20, max_seconds=60)  # warm every process and connection
            rounds = [await measure(stack, [request] * n, STANDARD, deadline_s(n)) for _ in range(plan.rounds)]
            if name == "2x2":
                pairs = {"direct": SMALL.post(stack.api_url), "nginx": SMALL.post(stack.urls["nginx"])}
                overhead = await ttft_pairs(pairs, 40 if plan.quick else 200, 1)
            mid = sorted(rounds, key=lambda r: r["tokens_per_s"])[len(rounds) // 2]  # the median round
        layouts[name] = {"rounds": rounds, "median_round": mid}
        per_process = {k: v for k, v in mid["cpu_us_per_token"].items() if k not in ("client", "upstream")}
        rows.append([name, mid["tokens_per_s"], mid["ttft_ms_p99"], mid["serving_cpu_us_per_token"],
                     ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_process.items())),
                     ", ".join(f"{k} {v}" for k, v in sorted(mid["redis_connections"].items())),
                     f"{sum(r['ok'] for r in rounds)}/{n * len(rounds)}"])  # fmt: skip
        progress(f"scale_out {name}: {mid['tokens_per_s']:.0f} tokens/s")
    header = ["layout", "tokens/s", "TTFT p99 ms", "serving CPU µs/token", "CPU µs/token per process",
              "Redis connections per process (max)", "ok"]  # fmt: skip
    title = f"scale_out: {n} streams at once, median round of {plan.rounds}, {os.cpu_count()} cores"
    return {
        "layouts": layouts,
        "ttft_through_nginx": overhead,
        "tables": [table(title, header, rows), *overhead.pop("tables")],
    }


SCENARIOS: dict[str, Callable[[Plan], Awaitable[Result]]] = {
    f.__name__: f for f in (ttft, idle_cpu, throughput, curve, many_clients, delivery, batching, cost, scale_out)
}
