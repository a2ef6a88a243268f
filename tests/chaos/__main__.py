"""`make chaos`: the chaos suite at full size (python -m tests.chaos --help); prints the counts, exits 1 on any
invariant violation."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import ChaosConfig, run_chaos


def main() -> int:
    defaults = ChaosConfig()
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=40)
    parser.add_argument("--worker-kills", type=int, default=8)
    parser.add_argument("--api-restarts", type=int, default=4)
    parser.add_argument("--redis-restarts", type=int, default=3)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    config = ChaosConfig(
        generations=args.generations,
        in_flight=args.in_flight,
        worker_kills=args.worker_kills,
        api_restarts=args.api_restarts,
        redis_restarts=args.redis_restarts,
        seed=args.seed,
    )
    workdir = Path(tempfile.mkdtemp(prefix="sse-relay-chaos-"))
    report = asyncio.run(run_chaos(config, workdir))
    print(json.dumps(report.summary(), indent=2, ensure_ascii=False))
    for violation in report.violations:
        print("VIOLATION:", violation)
    print(f"process logs: {workdir}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
