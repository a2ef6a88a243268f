"""CLI: `python -m bench.run [--quick] [--only NAME]` runs the scenarios and writes bench/results/tables.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

import uvloop

from bench import report
from bench.scenarios import SCENARIOS, Plan
from bench.stack import OUT, ROOT, raise_fd_limit

# A scenario that overruns this is stopped (its processes too): `make bench` must end by itself.
LIMIT_S = 1500


def run_scenario(name: str, plan: Plan) -> dict[str, Any]:
    """One scenario in its own event loop (uvloop, like the servers); its error is recorded, not raised."""
    entry: dict[str, Any] = {"quick": plan.quick, "date": datetime.now(UTC).isoformat(timespec="seconds")}
    entry.update(git=report.git_state(), load_before=round(os.getloadavg()[0], 1))
    started = time.monotonic()
    print(f"[bench] {name}: running", flush=True)

    async def limited() -> dict[str, Any]:
        async with asyncio.timeout(LIMIT_S * (0.5 if plan.quick else 1)):
            return await SCENARIOS[name](plan)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            entry["result"] = runner.run(limited())
    except Exception as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()[-4000:]
        print(f"[bench] {name}: FAILED to run: {entry['error']}", flush=True)
    entry.update(seconds=time.monotonic() - started, load_after=round(os.getloadavg()[0], 1))
    print(f"[bench] {name}: {entry['seconds']:.0f} s", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run (results under bench/out/)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 3, --quick 1)")
    args = parser.parse_args(argv)
    raise_fd_limit()
    plan = Plan.make(args.quick)
    plan = dataclasses.replace(plan, rounds=args.rounds) if args.rounds else plan
    # Smoke runs never overwrite the committed results.
    results_dir = OUT / "quick" if args.quick else ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results_file = results_dir / "results.json"
    # --only refreshes some scenarios and keeps the others' last results.
    doc = json.loads(results_file.read_text()) if args.only and results_file.exists() else {"scenarios": {}}
    command = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    failed = False
    for name in (n for n in SCENARIOS if args.only is None or n in args.only):
        doc["scenarios"][name] = {**run_scenario(name, plan), "command": command}
        failed = failed or "error" in doc["scenarios"][name]
        doc["meta"] = report.machine_info()
        # Saved after each scenario (in the suite's order): a later crash keeps what was measured.
        results_file.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tables = report.write(doc, results_dir)
    for entry in doc["scenarios"].values():
        for name, measured, status in (entry.get("result") or {}).get("targets", []):
            print(f"[bench] {status:4} {name}: {report.fmt(measured)}")
    print(f"[bench] wrote {tables.relative_to(ROOT)} and {results_file.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
