"""CLI: `python -m bench.run [--quick] [--only NAME]` runs the scenarios and writes bench/results/tables.md."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.scenarios import SCENARIOS, Plan, Result
from bench.stack import DEFAULT_REDIS_URL, OUT, ROOT, raise_fd_limit

RESULTS_DIR = ROOT / "bench" / "results"
# Smoke runs never overwrite the committed report and results.
QUICK_DIR = OUT / "quick"
# A scenario that overruns this is stopped (its processes too): `make bench` must end by itself.
SCENARIO_LIMIT_S = {
    "ttft": 300,
    "idle_cpu": 120,
    "throughput": 900,
    "curve": 780,
    "many_clients": 600,
    "delivery": 600,
    "redis_cost": 900,
    "cost": 900,
    "scale_out": 900,
}


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for the client too when installed: the client shares the machine's two cores with the servers."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


async def _limited(name: str, plan: Plan) -> Result:
    async with asyncio.timeout(SCENARIO_LIMIT_S[name] * (0.5 if plan.quick else 1)):
        return await SCENARIOS[name](plan)


def run_scenario(name: str, plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    entry: dict[str, Any] = {"name": name, "quick": plan.quick, "date": datetime.now(UTC).isoformat(timespec="seconds")}
    print(f"[bench] {name}: running", flush=True)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            entry["result"] = runner.run(_limited(name, plan))
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-4000:]
        print(f"[bench] {name}: FAILED to run: {entry['error']}", flush=True)
    entry["seconds"] = time.monotonic() - started
    print(f"[bench] {name}: {entry['seconds']:.1f} s", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run (results under bench/out/)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    args = parser.parse_args(argv)
    fd_limit = raise_fd_limit()
    plan = Plan.make(args.quick)
    results_dir = QUICK_DIR / "results" if args.quick else RESULTS_DIR
    results_dir.mkdir(parents=True, exist_ok=True)
    results_file = results_dir / "results.json"
    names = [name for name in SCENARIOS if args.only is None or name in args.only]

    doc: dict[str, Any] = {"scenarios": {}}
    if args.only and results_file.exists():
        # --only refreshes some scenarios and keeps the others' last results in the report.
        doc = json.loads(results_file.read_text())
    git_at_start = report.git_state()
    command = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    started = time.monotonic()
    for name in names:
        entry = run_scenario(name, plan)
        entry["command"] = command
        doc["scenarios"][name] = entry
        # Saved after each scenario: a later crash keeps what was measured.
        results_file.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    doc["meta"] = report.machine_info(DEFAULT_REDIS_URL)
    doc["meta"].update(
        command=command,
        git_at_start=git_at_start,
        quick=plan.quick,
        fd_limit=fd_limit,
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        run_seconds=time.monotonic() - started,
        scenarios_run=names,
    )
    results_file.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    tables = report.write(doc, results_dir)
    for line in report.summary_lines(doc):
        print(f"[bench] {line}")
    print(f"[bench] wrote {_relative(tables)} and {_relative(results_file)} in {doc['meta']['run_seconds']:.0f} s")
    return 1 if any("error" in doc["scenarios"][name] for name in names) else 0


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
