"""`sse-relay` console script: dispatches sub-commands."""

from __future__ import annotations

import argparse

from cli import dev, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sse-relay", description="Queue-backed, resumable SSE for LLM output.")
    commands = parser.add_subparsers(dest="command", required=True)
    run_dev = commands.add_parser("dev", help="run Redis (if needed), the demo model (if no key), worker and API")
    run_dev.add_argument("--host", default="127.0.0.1")
    run_dev.add_argument("--port", type=int, default=8000)
    commands.add_parser("migrate", help="create or upgrade the result store's schema (DATABASE_URL)")
    run_purge = commands.add_parser("purge", help="delete stored results older than the retention")
    run_purge.add_argument("--older-than-days", type=float, default=None, help="default: RESULT_RETENTION_DAYS")
    args = parser.parse_args(argv)
    if args.command == "dev":
        return dev.run(args.host, args.port)
    if args.command == "migrate":
        return results.migrate()
    if args.command == "purge":
        return results.purge(args.older_than_days)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
