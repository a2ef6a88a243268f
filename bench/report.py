"""Results -> bench/results/tables.md (one table per scenario, the targets) and curve.png; no prose."""

from __future__ import annotations

import importlib
import math
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import redis

from bench.stack import ROOT

PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "sse-starlette", "arq", "redis", "hiredis", "openai", "orjson")
Doc = dict[str, Any]


def machine_info(redis_url: str) -> Doc:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _lines("/proc/cpuinfo") if ln.startswith("model name")), "?")
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        redis_version = str(cast(Doc, client.info("server"))["redis_version"])
        client.close()
    except redis.RedisError:
        redis_version = "unreachable"
    load = os.getloadavg()[0]
    return {
        "machine": f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Redis {redis_version}",
        "load_at_end": round(load, 1),
        "packages": versions,
        "git": git_state(),
    }


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def git_state() -> str:
    """The commit measured, and how many tracked files differed from it (the bench's outputs excepted)."""

    def git(*args: str) -> str:
        command = ["git", *args]  # git from PATH, like make
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()  # noqa: S603

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results", ":!BENCHMARKS.md")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + {len(dirty.splitlines())} changed file(s)" if dirty else head


def _get(doc: Doc, *path: str) -> Any:
    node: Any = doc.get("scenarios", {})
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [
        [c if isinstance(c, str) else fmt(c, 2 if isinstance(c, float) and abs(c) < 10 else 1) for c in r] for r in rows
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in cells), ""]


def targets(doc: Doc) -> list[list[Any]]:
    """[target, measured, PASS/FAIL/NOT RUN] for each performance target the suite measures."""
    diff = _get(doc, "ttft", "result", "median", "diff") or {}
    delivery = {m["mode"]: m for m in _get(doc, "delivery", "result", "modes") or []}
    tput = _get(doc, "throughput", "result", "median") or {}
    many = _get(doc, "many_clients", "result", "relay") or {}
    points = _get(doc, "redis_cost", "result", "points") or []
    light: Doc = next((p for p in points if p["coalesce_ms"] == 0 and p["load"] == "light"), {})
    rows: list[tuple[str, Any, bool]] = [
        ("TTFT p50, relay - direct <= 3 ms", diff.get("p50"), (diff.get("p50") or 99) <= 3),
        ("TTFT p99, relay - direct <= 15 ms", diff.get("p99"), (diff.get("p99") or 99) <= 15),
        (
            "idle worker <= 1 % of a core",
            _get(doc, "idle_cpu", "result", "cpu_pct_of_core", "worker"),
            (_get(doc, "idle_cpu", "result", "cpu_pct_of_core", "worker") or 99) <= 1,
        ),
        (
            "one API process delivers >= 60 % of MEMORY's events/s (`delivery`, max rate)",
            _pct(delivery.get("max", {}).get("ratio_events_per_s")),
            (delivery.get("max", {}).get("ratio_events_per_s") or 0) >= 0.6,
        ),
        (
            "10,000 clients held by one API process, all receiving",
            many.get("receiving_while_held"),
            many.get("receiving_while_held") == many.get("clients") and many.get("failed") == 0,
        ),
        (
            "light load: ~1 token per event (`redis_cost`, adaptive)",
            light.get("relay", {}).get("tokens_per_event"),
            (light.get("relay", {}).get("tokens_per_event") or 99) <= 1.5,
        ),
        (
            "worker tokens per CPU-second / plain SDK loop's >= 2 (`cost`)",
            _get(doc, "cost", "result", "median", "ratio"),
            (_get(doc, "cost", "result", "median", "ratio") or 0) >= 2,
        ),
        (
            "end to end at 1,000 streams >= 50 % of bare Starlette (`throughput`)",
            _pct(tput.get("ratio_tokens_per_s")),
            (tput.get("ratio_tokens_per_s") or 0) >= 0.5,
        ),
    ]
    return [
        [name, value, "NOT RUN" if value in (None, "n/a") else ("PASS" if ok else "FAIL")] for name, value, ok in rows
    ]


def _pct(ratio: Any) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.1f} %"


def summary_lines(doc: Doc) -> list[str]:
    return [
        f"{status:7} {name}: {value if isinstance(value, str) else fmt(value, 2)}"
        for name, value, status in targets(doc)
    ]


def _sections(doc: Doc) -> list[str]:
    out: list[str] = []
    if r := _get(doc, "ttft", "result"):
        rows = [
            [who, *(r["median"][who][q] for q in ("p50", "p90", "p99", "mean"))] for who in ("direct", "relay", "diff")
        ]
        out += ["## ttft (ms, medians of the repeats)", "", *_table(["system", "p50", "p90", "p99", "mean"], rows)]
        rows = [
            [i + 1, *(rep["diff"][q] for q in ("p50", "p90", "p99")), rep["relay"]["n"]]
            for i, rep in enumerate(r["repeats"])
        ]
        out += _table(["repeat", "diff p50", "diff p90", "diff p99", "samples"], rows)
    if r := _get(doc, "idle_cpu", "result"):
        rows = [[name, pct, r["cpu_seconds"][name]] for name, pct in r["cpu_pct_of_core"].items()]
        out += [f"## idle_cpu ({r['window_s']:.0f} s window)", "", *_table(["process", "% of a core", "CPU s"], rows)]
        out += [f"Redis commands/s, server-wide: {r['redis_commands_per_s_server_wide']:.1f}", ""]
    if r := _get(doc, "delivery", "result"):
        rows = [
            [
                m["mode"],
                m["events"],
                m["delay_ms"],
                _pct(m["ratio_events_per_s"]),
                _pct(m["ratio_server_cpu"]),
                m["api_cpu_us_per_event"],
                m["memory_cpu_us_per_event"],
                len(m["rounds"]),
            ]
            for m in r["modes"]
        ]
        header = [
            "mode",
            "events",
            "delay ms",
            "events/s vs MEMORY",
            "server CPU ratio",
            "API µs/event",
            "MEMORY µs/event",
            "rounds",
        ]
        out += [f"## delivery ({r['streams']} streams, medians)", "", *_table(header, rows)]
    if r := _get(doc, "redis_cost", "result"):
        header = [
            "load",
            "COALESCE_MS",
            "streams",
            "token every ms",
            "tokens/event",
            "lateness p50 ms",
            "lateness p99 ms",
            "commands sent/token",
            "script calls/token",
            "commandstats/token",
            "tokens/s",
            "ok",
        ]
        rows = [
            [
                p["load"],
                p["coalesce_ms"],
                p["streams"],
                p["delay_ms"],
                p["relay"]["tokens_per_event"],
                p["token_lateness_ms_p50"],
                p["token_lateness_ms_p99"],
                p.get("client_commands_per_token"),
                p["script_calls_per_token"],
                p["commandstats_per_token"],
                p["relay"]["tokens_per_s"],
                p["relay"]["ok"],
            ]
            for p in r["points"]
        ]
        out += [
            f"## redis_cost ({r['chunk_chars']}-char tokens, {r['tokens_per_stream']} per stream)",
            "",
            *_table(header, rows),
        ]
    if r := _get(doc, "cost", "result"):
        rows = [
            [
                i + 1,
                x["worker"]["tokens_per_cpu_s"],
                x["sdk"]["tokens_per_cpu_s"],
                x["ratio"],
                x["worker"]["cpu_s"],
                x["sdk"]["cpu_s"],
                x["worker"]["tokens_per_event"],
                x["worker"]["ok"],
            ]
            for i, x in enumerate(r["rounds"])
        ]
        header = [
            "round",
            "worker tokens/CPU-s",
            "SDK loop tokens/CPU-s",
            "ratio",
            "worker CPU s",
            "SDK CPU s",
            "tokens/event",
            "ok",
        ]
        out += [
            f"## cost ({r['streams']} streams x {r['tokens_per_stream']} tokens, `{r['model']}`)",
            "",
            *_table(header, rows),
        ]
        out += [f"Median ratio: **{r['median']['ratio']:.2f}**", ""]
    for name in ("throughput", "curve"):
        if r := _get(doc, name, "result"):
            out += [
                f"## {name} ({r['chunks_per_stream']} chunks of {r['chunk_chars']} chars every {r['delay_ms']} ms)",
                "",
            ]
            out += _table(_LEVEL_HEADER, [row for p in r["points"] for row in _level_rows(p)])
    if name := "curve" if _get(doc, "curve", "result") else "":
        out += ["![curve](curve.png)", ""]
    if r := _get(doc, "many_clients", "result"):
        keys = (
            "clients",
            "receiving_while_held",
            "failed",
            "seconds_to_connect_all",
            "rss_kib_per_client",
            "hold_cpu_pct_of_core",
            "api_redis_connections_max",
        )
        rows = [[k, r["relay"].get(k), r["baseline"].get(k)] for k in keys]
        out += [
            f"## many_clients ({r['generations']} generations, {r['pacing']})",
            "",
            *_table(["", "relay", "MEMORY"], rows),
        ]
    if r := _get(doc, "scale_out", "result"):
        out += _scale_out_section(r)
    for name, entry in doc.get("scenarios", {}).items():
        problems = (entry.get("result") or {}).get("log_problems")
        if problems or "error" in entry:
            out += [
                f"## {name}: problems",
                "",
                "```",
                entry.get("error", ""),
                *(f"{k}: {v}" for k, v in (problems or {}).items()),
                "```",
                "",
            ]
    return out


def _scale_out_section(r: Doc) -> list[str]:
    layouts = r["layouts"]
    rows = []
    for name, layout in layouts.items():
        best = layout["best"]
        procs = best["processes"]
        conns = {k: v["redis_connections_max"] for k, v in procs.items() if v["redis_connections_max"] is not None}
        per_token = {k: v for k, v in best["cpu_us_per_token"].items() if k not in ("client", "upstream")}
        rows.append(
            [
                name,
                best["relay"]["tokens_per_s"],
                best["relay"]["ttft_ms_p99"],
                ", ".join(f"{k} {v}" for k, v in sorted(conns.items())),
                best["relay_cpu_us_per_token"],
                ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_token.items())),
                f"{best['relay']['ok']}/{best['relay']['streams']}",
            ]
        )
    header = ["layout", "tokens/s", "TTFT p99 ms", "Redis conns per process (max)", "serving CPU µs/token",
              "CPU µs/token per process", "ok"]  # fmt: skip
    streams = next(iter(layouts.values()))["streams"]
    out = [
        f"## scale_out ({streams} streams of {r['chunks_per_stream']} x {r['chunk_chars']}-char tokens every "
        f"{r['delay_ms']} ms, {r['cores']} cores; best of the rounds)",
        "",
        *_table(header, rows),
    ]
    t = r["ttft_through_nginx"]
    rows = [[label, t[label]["p50"], t[label]["p90"], t[label]["p99"], t[label]["n"]] for label in ("direct", "nginx")]
    rows.append(["nginx overhead", *(t["overhead_ms"][q] for q in ("p50", "p90", "p99")), ""])
    title = "TTFT, sequential, direct to one API vs through nginx (ms):"
    return [*out, title, "", *_table(["", "p50", "p90", "p99", "n"], rows)]


_LEVEL_HEADER = [
    "streams",
    "system",
    "tokens/s",
    "ratio",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "latency p99 ms",
    "tokens/event",
    "commands/token",
    "worker CPU %",
    "API CPU %",
    "ok",
    "failed",
]


def _level_rows(point: Doc) -> list[list[Any]]:
    base, relay, procs = point["baseline"], point["relay"], point.get("processes", {})
    cpu = {k: procs.get(k, {}).get("cpu_pct_of_core") for k in ("worker", "api")}
    return [
        [
            point["streams"],
            "bare Starlette",
            base["tokens_per_s"],
            "",
            base["ttft_ms_p50"],
            base["ttft_ms_p99"],
            base["token_latency_ms_p99"],
            base["tokens_per_event"],
            "",
            "",
            "",
            base["ok"],
            base["failed"],
        ],
        [
            point["streams"],
            "sse-relay",
            relay["tokens_per_s"],
            _pct(relay["tokens_per_s"] / base["tokens_per_s"]),
            relay["ttft_ms_p50"],
            relay["ttft_ms_p99"],
            relay["token_latency_ms_p99"],
            relay["tokens_per_event"],
            point.get("commands_per_token", ""),
            cpu["worker"],
            cpu["api"],
            relay["ok"],
            relay["failed"],
        ],
    ]


def plot_curve(doc: Doc, path: Path) -> None:
    points = _get(doc, "curve", "result", "points")
    try:  # imported by name: `make test` type-checks bench without the bench extra
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return
    if not points:
        return
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = [p["streams"] for p in points]
    for key, label, style in (("baseline", "bare Starlette", "o--"), ("relay", "sse-relay", "s-")):
        rate.plot(levels, [p[key]["tokens_per_s"] for p in points], style, label=label)
        latency.plot(levels, [p[key]["token_latency_ms_p99"] for p in points], style, label=label)
    rate.set_yscale("log")
    latency.set_yscale("symlog", linthresh=1.0)
    for axis, title in ((rate, "tokens delivered per second"), (latency, "p99 token latency, ms")):
        axis.set_xscale("log")
        axis.set_xlabel("concurrent streams")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(doc: Doc, results_dir: Path) -> Path:
    meta = doc.get("meta", {})
    head = [
        "# Benchmark tables (generated by `python -m bench.run`; the analysis is in BENCHMARKS.md)",
        "",
        f"- {meta.get('machine', '')}; load average at the end {meta.get('load_at_end')}; code {meta.get('git')}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in meta.get('packages', {}).items())}",
    ]
    for name, entry in doc.get("scenarios", {}).items():
        quick = ", quick sizes" if entry.get("quick") else ""
        head.append(f"- `{name}`: {entry.get('date')}, {entry.get('seconds', 0):.0f} s{quick}")
    body = ["", "## Targets", "", *_table(["target", "measured", "status"], targets(doc)), *_sections(doc)]
    path = results_dir / "tables.md"
    path.write_text("\n".join(head + body))
    plot_curve(doc, results_dir / "curve.png")
    return path
