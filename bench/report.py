"""Writes BENCHMARKS.md from the results: machine, command, a table per scenario, SPEC targets, the curve plot."""

from __future__ import annotations

import importlib
import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import redis

from bench.scenarios import CONNECT_LIMIT
from bench.stack import ROOT

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sse-starlette",
    "arq",
    "redis",
    "hiredis",
    "openai",
    "matplotlib",
)
HANDFUL_OF_CONNECTIONS = 10
Doc = dict[str, Any]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info(redis_url: str) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0
    )
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    redis_version = "unreachable"
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        try:
            redis_version = str(cast(dict[str, Any], client.info("server"))["redis_version"])
        finally:
            client.close()
    except redis.RedisError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "redis_url": redis_url,
        "packages": versions,
        "git": git_state(),
    }


def git_state() -> str:
    """The commit measured, and whether the work tree had uncommitted changes (the app may be mid-change);
    the benchmark's own outputs do not count."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, like make
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!BENCHMARKS.md"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = len(dirty.splitlines())
    return f"{head} + {changed} uncommitted file(s)" if changed else head


def _get(doc: Doc, *path: str) -> Any:
    node: Any = doc.get("scenarios", {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return text + unit


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: Any
    check: Callable[[Any], bool]
    shown: str

    @property
    def status(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "NOT RUN"
        return "PASS" if self.check(self.value) else "FAIL"


def targets(doc: Doc) -> list[Target]:
    ttft = _get(doc, "ttft", "result", "median", "diff")
    p50 = ttft["p50"] if ttft else None
    p99 = ttft["p99"] if ttft else None
    idle = _get(doc, "idle_cpu", "result", "cpu_pct_of_core", "worker")
    tput = _get(doc, "throughput", "result", "median") or {}
    delivery = _delivery_mode(doc, "max") or {}
    paced = _delivery_mode(doc, "paced") or {}
    ratio = delivery.get("ratio_events_per_s")
    cost = _cost_default(doc) or {}
    per_token = cost.get("client_commands_per_token")
    connections = [
        tput.get("api_redis_connections_max"),
        _get(doc, "many_clients", "result", "relay", "api_redis_connections_max"),
        *(p["processes"]["api"]["redis_connections_max"] for p in _get(doc, "curve", "result", "points") or []),
        *(
            r["relay"]["processes"]["api"]["redis_connections_max"]
            for mode in _get(doc, "delivery", "result", "modes") or []
            for r in mode["rounds"]
        ),
    ]
    known = [c for c in connections if c is not None]
    max_connections = max(known) if known else None
    many = _get(doc, "many_clients", "result", "relay") or {}
    clients = many.get("clients")
    held = many.get("receiving_while_held")
    n_streams = _get(doc, "delivery", "result", "streams")
    paced_ratio = paced.get("ratio_events_per_s")
    return [
        Target("ttft_p50", "TTFT p50, relay - direct <= 3 ms", p50, lambda v: v <= 3, _num(p50, 2, " ms")),
        Target("ttft_p99", "TTFT p99, relay - direct <= 15 ms", p99, lambda v: v <= 15, _num(p99, 2, " ms")),
        Target("idle_worker", "idle worker <= 1% of a core", idle, lambda v: v <= 1, _num(idle, 2, " %")),
        Target(
            "throughput",
            f"one API process delivers >= 60% of MEMORY's events/s at {_num(n_streams)} streams (`delivery`, max rate)",
            ratio,
            lambda v: v >= 0.6,
            _num(None if ratio is None else ratio * 100, 1, " %")
            + f" (paced 20 ms: {_num(None if paced_ratio is None else paced_ratio * 100, 1, ' %')}; "
            f"end to end through the worker, `throughput`: {_pct(tput.get('ratio_tokens_per_s'))})",
        ),
        Target(
            "redis_connections",
            f"a handful (<= {HANDFUL_OF_CONNECTIONS}) of Redis connections held by the API (every scenario)",
            max_connections,
            lambda v: v <= HANDFUL_OF_CONNECTIONS,
            _num(max_connections) + " (max sampled)",
        ),
        Target(
            "many_clients",
            f"{_num(clients)} clients held by one API process",
            None if not many else (held, clients, many.get("failed")),
            lambda v: v[0] == v[1] and v[2] == 0,
            f"{_num(held)} receiving, {_num(many.get('failed'))} failed, "
            f"{_num(many.get('rss_kib_per_client'), 1)} KiB RSS/client",
        ),
        Target(
            "commands_per_token",
            f"<= 0.25 Redis commands per delivered token (`redis_cost`, COALESCE_MS={_num(cost.get('coalesce_ms'), 0)}"
            ", the default; commands our processes send)",
            per_token,
            lambda v: v <= 0.25,
            f"{_num(per_token, 3)} (counting commands run inside scripts too: "
            f"{_num(cost.get('all_commands_per_token'), 3)})",
        ),
    ]


def _pct(ratio: Any) -> str:
    return _num(None if ratio is None else ratio * 100, 1, " %")


def _delivery_mode(doc: Doc, mode: str) -> Doc | None:
    for entry in _get(doc, "delivery", "result", "modes") or []:
        if entry["mode"] == mode:
            return cast(Doc, entry)
    return None


def _cost_default(doc: Doc) -> Doc | None:
    for point in _get(doc, "redis_cost", "result", "points") or []:
        if point["is_default"]:
            return cast(Doc, point)
    return None


def summary_lines(doc: Doc) -> list[str]:
    return [f"{t.status:7} {t.goal}: {t.shown}" for t in targets(doc)]


def plot_curve(doc: Doc, path: Path) -> bool:
    points = _get(doc, "curve", "result", "points")
    if not points:
        return False
    try:
        # Imported by name: `make test` type-checks bench with only the dev extras installed.
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = [p["streams"] for p in points]
    meta = _get(doc, "curve", "result") or {}
    if meta.get("delay_ms"):
        # What the pacing allows: every stream at one chunk per delay_ms.
        ideal = [n * 1000 / meta["delay_ms"] for n in levels]
        rate_axis.plot(levels, ideal, ":", color="grey", label="paced ideal")
    for key, label, style in (("baseline", "MEMORY baseline", "o--"), ("relay", "sse-relay", "s-")):
        rates = [p[key]["tokens_per_s"] for p in points]
        latencies = [p[key]["token_latency_ms_p99"] for p in points]
        rate_axis.plot(levels, rates, style, label=label)
        latency_axis.plot(levels, latencies, style, label=label)
    rate_axis.set_yscale("log")
    # symlog: the p99 spans a few ms (baseline) to seconds (saturated); it is never far below zero.
    latency_axis.set_yscale("symlog", linthresh=1.0)
    for axis in (rate_axis, latency_axis):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent streams")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    rate_axis.set_ylabel("tokens delivered per second")
    rate_axis.set_title("Delivery rate")
    latency_axis.set_ylabel("ms")
    latency_axis.set_title("p99 token latency (inter-arrival - delay)")
    figure.suptitle(
        f"{meta.get('chunks_per_stream')} chunks of {meta.get('chunk_chars')} chars every {meta.get('delay_ms')} ms"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _scenario_head(doc: Doc, name: str, title: str) -> list[str]:
    entry = doc["scenarios"].get(name)
    lines = [f"## {title}", ""]
    if entry is None:
        return [*lines, "Not run.", ""]
    quick = " (quick sizes)" if entry.get("quick") else ""
    lines.append(f"`{entry.get('command', '')}`, {entry.get('date', '')}, {entry.get('seconds', 0):.0f} s{quick}.")
    lines.append("")
    if "error" in entry:
        lines += ["**The scenario failed to run:**", "", "```", entry.get("traceback", entry["error"]), "```", ""]
    return lines


def _problems(result: Doc) -> list[str]:
    problems = result.get("log_problems") or {}
    if not problems:
        return ["Process logs: nothing suspicious.", ""]
    lines = ["Suspicious lines in the process logs:", "", "```"]
    for name, found in problems.items():
        lines += [f"[{name}] {line}" for line in found]
    return [*lines, "```", ""]


def _ttft_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "ttft", "Time to first token (`ttft`)")
    result = _get(doc, "ttft", "result")
    if not result:
        return lines
    lines.append(
        f"Sequential requests `{result['request']}`, {result['warmup']} warm-up each, then "
        f"{result['samples_per_system']} samples per system interleaved (relay, direct, relay, ...), "
        f"repeated {len(result['repeats'])} times. Time from opening the connection to the first `content` event. "
        "Medians over the repeats:"
    )
    lines.append("")
    med = result["median"]
    rows = [
        [label, *(_num(med[key][q], 2) for q in ("p50", "p90", "p99", "mean"))]
        for key, label in (
            ("direct", "DIRECT (FastAPI proxies the provider)"),
            ("relay", "sse-relay"),
            ("diff", "**difference (relay - direct)**"),
        )
    ]
    lines += _table(["ms", "p50", "p90", "p99", "mean"], rows)
    per = [
        [str(i + 1), *(_num(r["diff"][q], 2) for q in ("p50", "p90", "p99")), _num(r["relay"]["n"])]
        for i, r in enumerate(result["repeats"])
    ]
    lines += _table(["repeat", "diff p50", "diff p90", "diff p99", "samples"], per)
    if result.get("failures"):
        lines += [f"Failed samples: `{result['failures']}`", ""]
    return lines + _problems(result)


def _idle_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "idle_cpu", "Idle CPU (`idle_cpu`)")
    result = _get(doc, "idle_cpu", "result")
    if not result:
        return lines
    lines.append(
        f"The stack served one generation, rested 3 s, then CPU time (utime + stime from /proc/<pid>/stat) was "
        f"measured over {result['window_s']:.1f} s."
    )
    lines.append("")
    rows = [
        [name, _num(result["cpu_pct_of_core"][name], 2), _num(result["cpu_seconds"][name], 3)]
        for name in result["cpu_pct_of_core"]
    ]
    lines += _table(["process", "% of one core", "CPU seconds"], rows)
    lines.append(
        f"Redis commands/s during the window (server-wide, so including any other client of the server): "
        f"{_num(result['redis_commands_per_s_server_wide'], 1)}; by command: `{result['redis_commands']}`."
    )
    lines.append("")
    return lines + _problems(result)


def _batch_rows(baseline: Doc, relay: Doc) -> list[list[str]]:
    def row(label: str, key: str, digits: int = 0, ratio: bool = False) -> list[str]:
        b, r = baseline.get(key), relay.get(key)
        shown = _num(r / b * 100, 1, " %") if ratio and b else ""
        return [label, _num(b, digits), _num(r, digits), shown]

    return [
        row("tokens/s (8-char upstream chunks delivered)", "tokens_per_s", 0, True),
        row("content events/s", "events_per_s", 0, True),
        row("wall time, first request to last terminal (s)", "wall_s", 2),
        row("content events", "content_events"),
        row("tokens per event (coalescing)", "tokens_per_event", 2),
        row("streams complete and correct", "ok"),
        row("streams failed", "failed"),
        row("streams that got a `reset` (generation retried)", "streams_with_reset"),
        row("TTFT p50 (ms)", "ttft_ms_p50", 1),
        row("TTFT p99 (ms)", "ttft_ms_p99", 1),
    ]


def _throughput_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "throughput", "End to end through the worker at 1,000 streams (`throughput`)")
    result = _get(doc, "throughput", "result")
    if not result:
        return lines
    lines.append(
        f"{result['streams']} streams at once, each {result['chunks_per_stream']} chunks of "
        f"{result['chunk_chars']} chars every {result['delay_ms']} ms: live `POST /v1/generations` through "
        f"sse-relay vs `GET /stream` of the MEMORY baseline (bare Starlette, same pacing), same client, "
        f"{len(result['rounds'])} rounds (baseline then relay); relay settings `{result['settings']}`. "
        "Round with the median relay rate:"
    )
    lines.append("")
    rounds = sorted(result["rounds"], key=lambda r: r["relay"]["tokens_per_s"])
    middle = rounds[len(rounds) // 2]
    lines += _table(
        ["", "MEMORY baseline", "sse-relay", "relay/baseline"], _batch_rows(middle["baseline"], middle["relay"])
    )
    med = result["median"]
    lines += _table(
        ["median over rounds", "value"],
        [
            ["ratio of tokens/s", _num(med["ratio_tokens_per_s"] * 100, 1, " %")],
            ["ratio of content events/s", _num(med["ratio_events_per_s"] * 100, 1, " %")],
            ["Redis commands per delivered token", _num(med["commands_per_token"], 3)],
            ["  less others' background traffic", _num(med["commands_per_token_corrected"], 3)],
            [
                "  of which Lua script calls (EVALSHA...), one round trip each",
                _num(med.get("script_calls_per_token"), 3),
            ],
            ["Redis commands per delivered content event", _num(med["commands_per_content_event"], 3)],
            ["Redis connections held by the API (max sampled)", _num(med["api_redis_connections_max"])],
            ["Redis connections held by the API (idle, before)", _num(result["api_redis_connections_idle"])],
            ["Redis connections held by the worker (max sampled)", _num(med["worker_redis_connections_max"])],
            ["failed streams, relay / baseline (all rounds)", f"{med['relay_failed']} / {med['baseline_failed']}"],
        ],
    )
    procs = middle["processes"]
    lines += _table(
        ["process (relay run)", "CPU % of one core", "max RSS MiB", "Redis connections max / median"],
        [
            [
                name,
                _num(p["cpu_pct_of_core"], 0),
                _num(p["rss_mib_max"], 0),
                ""
                if p["redis_connections_max"] is None
                else f"{p['redis_connections_max']} / {_num(p['redis_connections_median'], 0)}",
            ]
            for name, p in procs.items()
        ],
    )
    lines += [
        f"Redis commands are `INFO commandstats` deltas over the relay run: server-wide, the benchmark's own INFO "
        "calls excluded, and commands run inside Lua scripts counted too (Redis counts them, as it executes them). "
        "Other clients of the server, measured with the stack idle just before: "
        f"{_num(result['redis_background_commands_per_s'], 1)} commands/s. Busiest commands: "
        f"`{middle['redis_commands_top']}`.",
        "",
        f"Connections: {result['redis_connection_method']}.",
        "",
    ]
    for index, r in enumerate(result["rounds"]):
        for key in ("baseline", "relay"):
            if r[key]["errors"]:
                lines += [f"Round {index + 1} {key} errors: `{r[key]['errors']}`", ""]
    return lines + _problems(result)


def _curve_section(doc: Doc, plot: str | None) -> list[str]:
    lines = _scenario_head(doc, "curve", "Delivery rate and latency against concurrency (`curve`)")
    result = _get(doc, "curve", "result")
    if not result:
        return lines
    lines.append(
        f"Each stream: {result['chunks_per_stream']} chunks of {result['chunk_chars']} chars every "
        f"{result['delay_ms']} ms. Token latency = {result['latency_definition']} (a coalesced event that "
        f"carries k chunks counts once, with a gap near k x delay). Relay settings `{result['settings']}`."
    )
    lines.append("")
    rows = []
    for p in result["points"]:
        b, r = p["baseline"], p["relay"]
        ratio = r["tokens_per_s"] / b["tokens_per_s"] * 100 if b["tokens_per_s"] else float("nan")
        rows.append(
            [
                _num(p["streams"]),
                _num(b["tokens_per_s"], 0),
                _num(r["tokens_per_s"], 0),
                _num(ratio, 1, " %"),
                _num(b["token_latency_ms_p50"], 1),
                _num(r["token_latency_ms_p50"], 1),
                _num(b["token_latency_ms_p99"], 1),
                _num(r["token_latency_ms_p99"], 1),
                _num(b["ttft_ms_p99"], 0),
                _num(r["ttft_ms_p99"], 0),
                _num(r["wall_s"], 1),
                f"{b['failed']} / {r['failed']}",
                _num(r.get("streams_with_reset")),
            ]
        )
    lines += _table(
        [
            "streams",
            "baseline tok/s",
            "relay tok/s",
            "relay/base",
            "baseline p50 lat ms",
            "relay p50 lat ms",
            "baseline p99 lat ms",
            "relay p99 lat ms",
            "baseline TTFT p99 ms",
            "relay TTFT p99 ms",
            "relay wall s",
            "failed b / r",
            "relay streams reset",
        ],
        rows,
    )
    names = list(result["points"][0]["processes"]) if result["points"] else []
    lines += ["CPU (% of one core) during each relay run, and Redis connections (max sampled):", ""]
    lines += _table(
        ["streams", *names, "API Redis conns", "worker Redis conns"],
        [
            [
                _num(p["streams"]),
                *(_num(p["processes"][name]["cpu_pct_of_core"], 0) for name in names),
                _num(p["processes"]["api"]["redis_connections_max"]),
                _num(p["processes"]["worker"]["redis_connections_max"]),
            ]
            for p in result["points"]
        ],
    )
    if plot:
        lines += [f"![delivery rate and p99 latency vs concurrency]({plot})", ""]
    for p in result["points"]:
        for key in ("baseline", "relay"):
            if p[key]["errors"]:
                lines += [f"{p['streams']} streams, {key} errors: `{p[key]['errors']}`", ""]
        if p.get("dead_processes"):
            lines += [f"{p['streams']} streams: processes exited: {p['dead_processes']}", ""]
    return lines + _problems(result)


def _many_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "many_clients", "Many SSE clients on one API process (`many_clients`)")
    result = _get(doc, "many_clients", "result")
    if not result:
        return lines
    relay, base = result["relay"], result["baseline"]
    lines.append(
        f"{_num(result['clients'])} concurrent `GET /v1/generations/{{id}}/events` on {result['generations']} "
        f"background generations ({relay.get('clients_per_generation')} clients each, {result['pacing']}), "
        f"opened {CONNECT_LIMIT} at a time; vs the same number of `GET /stream` on the MEMORY baseline. "
        f"A client counts as receiving if it was connected when the hold began and got another event during the "
        f"{_num(relay.get('hold_window_s'), 0)} s hold. RSS per client = (RSS while holding - RSS before) / clients."
    )
    lines.append("")

    def row(label: str, key: str, digits: int = 0) -> list[str]:
        return [label, _num(relay.get(key), digits), _num(base.get(key), digits)]

    lines += _table(
        ["", "sse-relay API", "MEMORY baseline"],
        [
            row("clients", "clients"),
            row("connected with >= 1 event", "connected_with_event"),
            row("receiving while held", "receiving_while_held"),
            row("failed (ended early)", "failed"),
            row("never connected within the deadline", "never_connected"),
            row("seconds to connect all", "seconds_to_connect_all", 1),
            row("server CPU % of one core while connecting", "ramp_cpu_pct_of_core", 0),
            row("server CPU % of one core while holding", "hold_cpu_pct_of_core", 0),
            row("RSS before (MiB)", "rss_mib_before", 1),
            row("RSS while holding (MiB)", "rss_mib_during", 1),
            row("RSS per client (KiB)", "rss_kib_per_client", 1),
            row("open fds while holding", "fds_during"),
            row("Redis connections held by the API (max sampled)", "api_redis_connections_max"),
        ],
    )
    for label, part in (("relay", relay), ("baseline", base)):
        if part.get("errors"):
            lines += [f"{label} errors: `{part['errors']}`", ""]
    return lines + _problems(result)


def _delivery_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "delivery", "One API process delivering through Redis (`delivery`, the SPEC figure)")
    result = _get(doc, "delivery", "result")
    if not result:
        return lines
    lines.append(
        f"{_num(result['streams'])} SSE clients on `GET /v1/generations/{{id}}/events` of one API process, fed by "
        "`bench/producer.py` instead of the worker: a small asyncio process that appends the real events to the "
        "generations' streams through the service's own `Generations.publish` (its ARGV, the PUBLISH script), "
        "pipelined. The generations are created and claimed with `Generations.create` / `claim` first. Against "
        "the MEMORY baseline (bare Starlette) serving the same number of events of the same size to the same "
        "client. Both sides: every client connected first, then a start gate (the producer starts / the baseline's "
        "streams are released); rate = content events / (last terminal event - gate). `paced`: one event per "
        "stream every 20 ms, one PUBLISH per event; `max`: as fast as each side goes, the producer writing "
        "several events per PUBLISH call (events per call below). Rounds alternate baseline then relay."
    )
    lines.append("")
    rows = []
    for mode in result["modes"]:
        for index, r in enumerate(mode["rounds"]):
            b, x = r["baseline"], r["relay"]
            produced = x.get("producer") or {}
            rows.append(
                [
                    f"{mode['mode']} ({mode['events']} events, {mode['delay_ms']} ms, {mode['per_call']}/call)",
                    str(index + 1),
                    _num(b["events_per_s"], 0),
                    _num(x["events_per_s"], 0),
                    _pct(r["ratio_events_per_s"]),
                    _num(produced.get("offered_events_per_s"), 0),
                    _num(x["processes"]["api"]["cpu_pct_of_core"], 0),
                    _num(produced.get("cpu_pct_of_core"), 0),
                    _num(x["processes"].get("redis-server", {}).get("cpu_pct_of_core"), 0),
                    _num(x["processes"]["client"]["cpu_pct_of_core"], 0),
                    _num(b["processes"]["memory"]["cpu_pct_of_core"], 0),
                    _cpu_cost(b, x),
                    _num(b.get("token_latency_ms_p99"), 0) + " / " + _num(x.get("token_latency_ms_p99"), 0),
                    f"{b['failed']} / {x['failed']}",
                    _num(x["processes"]["api"]["redis_connections_max"]),
                ]
            )
    lines += _table(
        [
            "mode",
            "round",
            "MEMORY ev/s",
            "relay ev/s",
            "relay/MEMORY",
            "producer wrote ev/s",
            "API CPU %",
            "producer CPU %",
            "Redis CPU %",
            "client CPU % (relay)",
            "MEMORY CPU %",
            "CPU µs/event: MEMORY + client / API + client + Redis + producer",
            "p99 gap-minus-delay ms, MEMORY / relay",
            "failed M / r",
            "API Redis conns",
        ],
        rows,
    )
    lines += _table(
        [
            "median over rounds",
            "relay/MEMORY events/s",
            "server CPU µs per event, MEMORY / API",
            "MEMORY's CPU per event over the API's",
        ],
        [
            [
                m["mode"],
                _pct(m["ratio_events_per_s"]),
                f"{_num(m.get('memory_cpu_us_per_event'), 1)} / {_num(m.get('api_cpu_us_per_event'), 1)}",
                _pct(m.get("ratio_server_cpu")),
            ]
            for m in result["modes"]
        ],
    )
    lines.append(
        "Events and tokens are the same thing here (one 8-char piece per event on both sides). CPU is % of one "
        "core over the round; the machine has 2 cores and is shared, so rounds vary; the ratio is taken per round, "
        "baseline and relay back to back. CPU µs per event = a process's CPU time over the round / content events "
        "delivered: what delivery costs each process whatever share of the cores the round got; the API's against "
        "MEMORY's is what the rate ratio would be if each server had a core of its own."
    )
    lines.append("")
    return lines + _problems(result)


def _cpu_cost(baseline: Doc, relay: Doc) -> str:
    b, x = baseline.get("cpu_us_per_event") or {}, relay.get("cpu_us_per_event") or {}
    if not b or not x:
        return "n/a"
    memory = f"{_num(b.get('memory'), 1)} + {_num(b.get('client'), 1)}"
    parts = " + ".join(_num(x.get(name), 1) for name in ("api", "client", "redis-server", "producer"))
    return f"{memory} / {parts}"


def _cost_section(doc: Doc) -> list[str]:
    lines = _scenario_head(doc, "redis_cost", "Redis commands per delivered token (`redis_cost`)")
    result = _get(doc, "redis_cost", "result")
    if not result:
        return lines
    lines.append(
        f"{result['streams']} live generations at once through the whole relay (API, worker, fake upstream), "
        f"each {result['tokens_per_stream']} tokens of {result['chunk_chars']} chars, one every "
        f"{result['delay_ms']} ms (a fast provider), one SSE client each; one stack per coalescing window "
        f"(`COALESCE_MS`, default {_num(result['default_coalesce_ms'], 0)}). Commands counted with Redis "
        "MONITOR on the benchmark's database: *sent by our processes* = the round trips the API and the worker "
        "make (a Lua script call counts once, XREAD, arq's own commands...); *run inside scripts* = what the "
        "scripts execute (MONITOR shows them as `lua`), which INFO commandstats also counts. Token lateness = how "
        "much later the client got a token than its stream's own even schedule (the line from its first to its "
        "last token, so the fake upstream's timer drift cancels out; the earliest token of a stream is on time): "
        "the wait in a coalescing window shows up here; at `COALESCE_MS=0` it is the relay's jitter alone."
    )
    lines.append("")
    rows = []
    for p in result["points"]:
        r = p["relay"]
        rows.append(
            [
                _num(p["coalesce_ms"], 0) + (" (default)" if p["is_default"] else ""),
                _num(p["client_commands_per_token"], 3),
                _num(p["script_calls_per_token"], 3),
                _num(p["all_commands_per_token"], 3),
                _num(p["commandstats_per_token"], 3),
                _num(r["tokens_per_event"], 2),
                _num(p["token_lateness_ms_p50"], 1),
                _num(p["token_lateness_ms_p99"], 1),
                _num(r["tokens_per_s"], 0),
                _num(p["processes"]["worker"]["cpu_pct_of_core"], 0),
                _num(p["processes"]["api"]["cpu_pct_of_core"], 0),
                f"{r['ok']} / {r['streams']}",
            ]
        )
    lines += _table(
        [
            "COALESCE_MS",
            "commands sent / token",
            "of which script calls",
            "all commands incl. inside scripts / token",
            "INFO commandstats / token (server-wide)",
            "tokens per event",
            "token lateness p50 ms",
            "token lateness p99 ms",
            "tokens/s",
            "worker CPU %",
            "API CPU %",
            "streams ok",
        ],
        rows,
    )
    for p in result["points"]:
        lines.append(
            f"- COALESCE_MS={_num(p['coalesce_ms'], 0)}: sent `{p['client_commands_top']}`; "
            f"inside scripts `{p['script_commands_top']}`"
        )
    lines.append("")
    lines.append(
        "The target row uses *commands sent*: each is one round trip and one command parsed by Redis, which is "
        "what grows with connections and load; a script's inner calls run inside that one command (no network, "
        "no parsing) and are shown for completeness."
    )
    lines.append("")
    for p in result["points"]:
        if p.get("log_problems"):
            lines += [f"COALESCE_MS={_num(p['coalesce_ms'], 0)}:", *_problems(p)]
    return lines


def _code_measured(meta: Doc) -> str:
    start, end = meta.get("git_at_start"), meta.get("git")
    if start is None or start == end:
        return str(end)
    return f"{start} at the start, {end} at the end (the work tree changed during the run)"


def render(doc: Doc, plot: str | None) -> str:
    meta = doc.get("meta", {})
    quick = meta.get("quick")
    lines = ["# Benchmarks", ""]
    if quick:
        lines += ["**Quick smoke run: small sizes, not comparable to the targets.**", ""]
    packages = ", ".join(f"{k} {v}" for k, v in meta.get("packages", {}).items())
    seconds = sum(float(entry.get("seconds", 0)) for entry in doc.get("scenarios", {}).values())
    lines += [
        f"Measured {meta.get('date')} with `{meta.get('command')}`; the scenarios below took {seconds / 60:.1f} min "
        "in all (`make bench` runs the full suite; `python -m bench.run --quick` is a smoke run, `--only NAME` "
        "re-runs one scenario).",
        "",
        f"- Machine: {meta.get('nproc')} CPUs, {meta.get('cpu_model')}, {meta.get('ram_gib')} GiB RAM, "
        f"Linux {meta.get('kernel')}",
        f"- Python {meta.get('python')}, Redis server {meta.get('redis_server')} ({meta.get('redis_url')}), "
        f"fd limit {meta.get('fd_limit')}",
        f"- Packages: {packages}",
        f"- Code measured: {_code_measured(meta)}",
        "- Everything on one machine: fake upstream (`python -m demo.model`), one API (`uvicorn --no-access-log "
        "--loop uvloop`), one arq worker, the baselines (same uvicorn options), the client (asyncio over raw "
        "sockets, uvloop) and Redis share the same cores.",
        "",
        "## SPEC targets",
        "",
    ]
    lines += _table(["target", "measured", "status"], [[t.goal, t.shown, t.status] for t in targets(doc)])
    lines += _ttft_section(doc)
    lines += _idle_section(doc)
    lines += _delivery_section(doc)
    lines += _cost_section(doc)
    lines += _throughput_section(doc)
    lines += _curve_section(doc, plot)
    lines += _many_section(doc)
    return "\n".join(lines).rstrip() + "\n"


def write(doc: Doc, results_dir: Path, report_path: Path) -> None:
    plot_path = results_dir / "curve.png"
    plot = None
    if plot_curve(doc, plot_path):
        plot = os.path.relpath(plot_path, report_path.parent)
    report_path.write_text(render(doc, plot) + _hand_written(report_path))


# The report's last section is written by hand after a run (what limits a figure, what was profiled); a
# regenerated report keeps it.
ANALYSIS_HEADING = "## Analysis"


def _hand_written(report_path: Path) -> str:
    try:
        old = report_path.read_text()
    except OSError:
        return ""
    at = old.find("\n" + ANALYSIS_HEADING)
    return "\n" + old[at + 1 :] if at >= 0 else ""
