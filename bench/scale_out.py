"""Scale-out scenario: the same load on 1 API x 1 worker and on 2 APIs x 2 workers behind nginx (deploy/nginx),
side by side, and the time-to-first-token nginx adds; per-process CPU per token shows where the work goes."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.procfs import percentile
from bench.scenarios import (
    Batch,
    Plan,
    Result,
    Sampler,
    _scale_overrides,
    echo_text,
    log_problems,
    progress,
    relay_pids,
    run_batch,
)
from bench.sseclient import Request, fetch
from bench.stack import BenchStack, _get_ok, bench_stack, host_port, redis_port, uvicorn_args
from cli.embedded_redis import free_port
from tests.support.nginx import running_nginx
from tests.support.stack import wait_for

_TTFT_TEXT = "hello world"


def _post(url: str, text: str, chunk: int, delay_ms: int) -> Request:
    host, port = host_port(url)
    payload: dict[str, Any] = {"prompt": f"echo:{text}", "model": f"demo@chunk={chunk},delay_ms={delay_ms}"}
    return Request.post_json(host, port, "/v1/generations", payload)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


async def _load(stack: BenchStack, url: str, pids: dict[str, int], plan: Plan, streams: int) -> Result:
    """`streams` live generations at once through `url`, a few rounds; tokens/s, TTFT, Redis connections and
    CPU microseconds per delivered token for every process."""
    chunks, size, delay_ms = plan.chunks, plan.chunk_size, plan.delay_ms
    text = echo_text(chunks * size)
    request = _post(url, text, size, delay_ms)
    await run_batch([request] * 20, max_seconds=60, record_times=False)  # warm every process and connection
    connection_pids = tuple(name for name in pids if name.startswith(("api", "worker")))
    rounds: list[Result] = []
    for _ in range(1 if plan.quick else 3):
        async with Sampler(pids, connection_pids, redis_port(stack.redis_url), interval=0.5) as sampler:
            got = await run_batch([request] * streams, max_seconds=min(300.0, 60 + streams * 0.05), record_times=True)
        summary = Batch(got, len(text), size, delay_ms).summary()
        tokens = max(1.0, summary["tokens"])
        cpu = {name: sampler.cpu_end[name] - sampler.cpu_start[name] for name in pids}
        # What serving costs: APIs, workers, Redis and nginx; not the load generator or the fake provider.
        serving = sum(seconds for name, seconds in cpu.items() if name not in ("client", "upstream"))
        rounds.append(
            {
                "relay": summary,
                "processes": sampler.report(),
                "cpu_us_per_token": {name: 1e6 * seconds / tokens for name, seconds in cpu.items()},
                "relay_cpu_us_per_token": 1e6 * serving / tokens,
            }
        )
    best = max(rounds, key=lambda r: r["relay"]["tokens_per_s"])
    return {"streams": streams, "rounds": rounds, "best": best}


async def _ttft_overhead(direct_url: str, proxied_url: str, samples: int) -> Result:
    """Sequential small generations, direct to one API and through nginx, alternated so noise hits both alike."""
    direct, proxied = _post(direct_url, _TTFT_TEXT, 4, 0), _post(proxied_url, _TTFT_TEXT, 4, 0)
    values: dict[str, list[float]] = {"direct": [], "nginx": []}
    for i in range(samples + 10):
        for label, request in (("direct", direct), ("nginx", proxied)):
            stream = await fetch(request, max_seconds=30)
            if i >= 10 and stream.ok and stream.ttft is not None:  # the first 10 pairs warm up
                values[label].append(stream.ttft * 1000)
    out: Result = {
        label: {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99)}
        for label, v in values.items()
    }
    out["overhead_ms"] = {q: out["nginx"][q] - out["direct"][q] for q in ("p50", "p90", "p99")}
    return out


def _start_api(stack: BenchStack, name: str) -> str:
    url = f"http://127.0.0.1:{free_port()}"
    process = stack.start(name, uvicorn_args("api.main:app", int(url.rsplit(":", 1)[1])))
    wait_for(lambda: _get_ok(f"{url}/readyz"), name, process, timeout=60)
    return url


async def scale_out(plan: Plan) -> Result:
    streams = 100 if plan.quick else 400
    overrides = _scale_overrides(streams)
    layouts: Result = {}
    with bench_stack("scale_out_1x1", overrides=overrides) as stack:
        layouts["1x1"] = await _load(stack, stack.api_url, relay_pids(stack), plan, streams)
        problems = {"1x1": log_problems(stack)}
    progress(f"scale_out 1x1: {layouts['1x1']['best']['relay']['tokens_per_s']:.0f} tok/s")
    with bench_stack("scale_out_2x2", overrides=overrides) as stack, ExitStack() as cleanup:
        stack.start_worker("worker-2")
        second = _start_api(stack, "api-2")
        nginx_dir = stack.logdir / "nginx"
        nginx_dir.mkdir()
        ports = [host_port(url)[1] for url in (stack.api_url, second)]
        nginx = cleanup.enter_context(running_nginx(nginx_dir, ports))
        pids = {**relay_pids(stack), "api-2": stack.pid("api-2"), "worker-2": stack.pid("worker-2")}
        pids["nginx"] = nginx.popen.pid
        pids.update({f"nginx-worker-{i}": pid for i, pid in enumerate(_children(nginx.popen.pid))})
        layouts["2x2"] = await _load(stack, nginx.url, pids, plan, streams)
        progress(f"scale_out 2x2: {layouts['2x2']['best']['relay']['tokens_per_s']:.0f} tok/s")
        overhead = await _ttft_overhead(stack.api_url, nginx.url, 40 if plan.quick else 200)
        problems["2x2"] = log_problems(stack)
    return {
        "cores": os.cpu_count(),
        "chunks_per_stream": plan.chunks,
        "chunk_chars": plan.chunk_size,
        "delay_ms": plan.delay_ms,
        "layouts": layouts,
        "ttft_through_nginx": overhead,
        "log_problems": {k: v for k, v in problems.items() if v},
    }
