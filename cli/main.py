"""`sse-relay` console script: dispatches sub-commands."""

from __future__ import annotations

import argparse
import math
from importlib.metadata import version

from cli import dev, results, worker
from sse_relay import cli as client_commands


def _days(value: str) -> float:
    days = float(value)
    if not (math.isfinite(days) and days >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of days, 0 or more (got {value})")
    return days


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sse-relay", description="Queue-backed, resumable SSE for LLM output.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('sse-relay')}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_dev = commands.add_parser("dev", help="run Redis (if needed), the demo model (if no key), worker and API")
    run_dev.add_argument("--host", default="127.0.0.1")
    run_dev.add_argument("--port", type=int, default=8000)
    run_worker = commands.add_parser("worker", help="run a worker: streams queued generations from the provider")
    run_worker.add_argument("--check", action="store_true", help="exit 0 if a worker recorded its health lately")
    commands.add_parser("migrate", help="create or upgrade the result store's schema (DATABASE_URL)")
    run_purge = commands.add_parser("purge", help="delete stored results older than the retention")
    run_purge.add_argument("--older-than-days", type=_days, default=None, help="default: RESULT_RETENTION_DAYS")
    client_commands.add_commands(commands)
    args = parser.parse_args(argv)
    if hasattr(args, "handler"):
        return client_commands.run(args)
    if args.command == "dev":
        return dev.run(args.host, args.port)
    if args.command == "worker":
        return worker.run(args.check)
    if args.command == "migrate":
        return results.migrate()
    if args.command == "purge":
        return results.purge(args.older_than_days)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
