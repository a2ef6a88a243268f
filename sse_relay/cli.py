"""The `sse-relay` client commands (generate, watch, get, cancel, list) on RelayClient; cli/main.py registers
them next to the service's own commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, TextIO

from sse_relay._core import Event, RelayError
from sse_relay.client import EventStream, RelayClient

DEFAULT_URL = "http://127.0.0.1:8000"
DETACHED = 130  # the shell's code for a process stopped by SIGINT


def add_commands(commands: Any) -> None:
    """Add the client commands to the `sse-relay` sub-parsers; each sets `handler`."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=None, help=f"the relay (default: $SSE_RELAY_URL, else {DEFAULT_URL})")
    connection.add_argument("--api-key", default=None, help="bearer key (default: $SSE_RELAY_API_KEY)")
    generate = commands.add_parser(
        "generate", parents=[connection], help="start a generation and stream its answer to stdout"
    )
    generate.add_argument("prompt", help="the prompt; `-` reads it from stdin")
    generate.add_argument("--model", default=None)
    generate.add_argument("--system", default=None, help="a system prompt")
    generate.add_argument("--json", action="store_true", help="print one JSON line per event (for scripts)")
    generate.set_defaults(handler=_generate)
    watch = commands.add_parser("watch", parents=[connection], help="follow a generation (replays it first)")
    watch.add_argument("id")
    watch.add_argument("--last-event-id", default=None, help="resume after this event instead of the start")
    watch.add_argument("--json", action="store_true", help="print one JSON line per event")
    watch.set_defaults(handler=_watch)
    get = commands.add_parser("get", parents=[connection], help="print a generation's status and text as JSON")
    get.add_argument("id")
    get.set_defaults(handler=_get)
    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a generation")
    cancel.add_argument("id")
    cancel.set_defaults(handler=_cancel)
    listing = commands.add_parser("list", parents=[connection], help="your generations, newest first")
    listing.add_argument("--status", choices=["queued", "running", "done", "error", "cancelled"], default=None)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", default=None, help="the cursor printed at the end of the previous page")
    listing.add_argument("--json", action="store_true", help="print the page as JSON")
    listing.set_defaults(handler=_list)


def run(args: argparse.Namespace) -> int:
    """Run a client command: RelayError -> its code on stderr and exit 1."""
    url = args.url or os.environ.get("SSE_RELAY_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("SSE_RELAY_API_KEY") or None
    try:
        with RelayClient(url, api_key=api_key) as relay:
            code: int = args.handler(relay, args)
            return code
    except RelayError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1


def _generate(relay: RelayClient, args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    stream = relay.stream(prompt, model=args.model, system=args.system)
    return _follow(stream, args)


def _watch(relay: RelayClient, args: argparse.Namespace) -> int:
    return _follow(relay.events(args.id, last_event_id=args.last_event_id), args)


def _follow(stream: EventStream, args: argparse.Namespace) -> int:
    """Print events as they arrive; Ctrl-C detaches (the generation keeps running) and says how to resume."""
    try:
        last = _print_events(stream, args.json, sys.stdout)
    except KeyboardInterrupt:
        if stream.id is None:
            print("\nDetached before the relay answered.", file=sys.stderr)
        else:
            where = f" --url {args.url}" if args.url else ""
            print(f"\nDetached; {stream.id} keeps running. Follow it again with:", file=sys.stderr)
            print(f"  sse-relay watch{where} {stream.id}", file=sys.stderr)
        return DETACHED
    if last is not None and last.type == "error":
        print(f"error: {last.code}: {last.error}", file=sys.stderr)
        return 1
    if last is None:  # resumed at the terminal event (204): the answer is in the stored result
        assert stream.id is not None
        stream.result()  # raises RelayError if it did not end `done`
    return 0


def _print_events(events: EventStream, as_json: bool, out: TextIO) -> Event | None:
    """`as_json`: one line per event, after a first line naming the generation (a script needs its id to
    `watch`, `get` or `cancel` it, and an event's `id` is its position in the stream, not the generation's)."""
    last = None
    text_ends_line = True
    announced = False
    for event in events:
        last = event
        if as_json and not announced and events.id is not None:
            out.write(json.dumps({"type": "generation", "generation_id": events.id}) + "\n")
            announced = True
        if as_json:
            out.write(json.dumps(event.as_dict(), ensure_ascii=False) + "\n")
        elif event.type == "content":
            out.write(event.data)
            text_ends_line = str(event.data).endswith("\n")
        elif event.type == "reset":
            reason = (event.data or {}).get("reason", "retry")
            print(f"\n[sse-relay] the answer restarts ({reason}):", file=sys.stderr)
            out.write("\n")
        elif event.type == "done" and not text_ends_line:
            out.write("\n")
        out.flush()
    return last


def _get(relay: RelayClient, args: argparse.Namespace) -> int:
    print(json.dumps(dataclasses.asdict(relay.get(args.id)), indent=2, ensure_ascii=False))
    return 0


def _cancel(relay: RelayClient, args: argparse.Namespace) -> int:
    print(f"{args.id} {relay.cancel(args.id)}")
    return 0


def _list(relay: RelayClient, args: argparse.Namespace) -> int:
    page = relay.list(status=args.status, limit=args.limit, after=args.after)
    if args.json:
        items = [dataclasses.asdict(item) for item in page.items]
        print(json.dumps({"items": items, "next": page.next}, indent=2, ensure_ascii=False))
        return 0
    for item in page.items:
        print(f"{item.id}  {item.status:<9}  {item.created_at}  {item.model}")
    if page.next is not None:
        print(f"more: sse-relay list --after {page.next}", file=sys.stderr)
    return 0
