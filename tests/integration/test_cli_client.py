"""The `sse-relay` console script's client commands against the real stack: streaming to stdout, exit codes,
errors on stderr, `--json` event lines, stdin prompts, and Ctrl-C detaching with a way to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from demo.model import answer_for
from tests.support.stack import ROOT, Stack

LONG = "".join(f"[{i:02d}]" for i in range(60))


def sse_relay(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=env,
    )  # fmt: skip


def test_generate_streams_the_answer_and_exits_0(stack: Stack) -> None:
    done = sse_relay("generate", "--url", stack.api_url, "--system", "Be brief", "Hello")
    assert done.returncode == 0, done.stderr
    expected = answer_for([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}])
    assert done.stdout == expected + "\n"


def test_generate_reads_the_prompt_from_stdin_and_prints_json_lines(stack: Stack) -> None:
    done = sse_relay("generate", "--url", stack.api_url, "--json", "-", stdin=f"echo:{LONG}")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    # First the generation's id, for a script to watch, get or cancel it; then the events.
    assert lines[0]["type"] == "generation" and lines[0]["generation_id"].startswith("gen_")
    assert [line["type"] for line in lines].count("generation") == 1
    assert lines[-1]["type"] == "done" and lines[-1]["data"]["length"] == len(LONG)
    assert "".join(line["data"] for line in lines if line["type"] == "content") == LONG
    fetched = json.loads(sse_relay("get", "--url", stack.api_url, lines[0]["generation_id"]).stdout)
    assert fetched["text"] == LONG


def test_an_error_terminal_exits_non_zero_with_its_code_on_stderr(stack: Stack) -> None:
    failed = sse_relay("generate", "--url", stack.api_url, "--model", "status-401", "Hello")
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: upstream_auth: ")
    unknown = sse_relay("get", "--url", stack.api_url, "gen_" + "0" * 32)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: not_found: ")


def test_ctrl_c_detaches_and_watch_resumes(stack: Stack) -> None:
    command = [sys.executable, "-m", "cli.main", "generate", "--json", "--model", "demo@chunk=4,delay_ms=50"]
    child = subprocess.Popen(
        [*command, f"echo:{LONG}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=_env(stack),
    )  # fmt: skip
    assert child.stdout is not None and child.stderr is not None
    announced = json.loads(child.stdout.readline())
    first = json.loads(child.stdout.readline())  # streaming has begun
    assert (announced["type"], first["type"]) == ("generation", "content")
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=20) == 130
    message = child.stderr.read()
    assert "Detached" in message
    generation_id = message.split("sse-relay watch ")[1].split()[0]
    assert generation_id == announced["generation_id"]
    # The generation kept running; `watch` follows it (from the start) to its end.
    watched = sse_relay("watch", generation_id, env=_env(stack))
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == LONG + "\n"
    view: dict[str, Any] = json.loads(sse_relay("get", generation_id, env=_env(stack)).stdout)
    assert view["status"] == "done" and view["text"] == LONG
    # Cancelling a finished generation is a no-op that says how it ended.
    cancelled = sse_relay("cancel", generation_id, env=_env(stack))
    assert (cancelled.returncode, cancelled.stdout.split()) == (0, [generation_id, "done"])


def test_cancel_stops_a_running_generation(stack: Stack) -> None:
    from sse_relay import RelayClient

    with RelayClient(stack.api_url) as relay:
        generation_id = relay.start(f"echo:{LONG}", model="demo@chunk=2,delay_ms=200")
    cancelled = sse_relay("cancel", "--url", stack.api_url, generation_id)
    assert cancelled.returncode == 0 and cancelled.stdout.split()[0] == generation_id
    watched = sse_relay("watch", "--url", stack.api_url, generation_id)
    assert watched.returncode == 1 and watched.stderr.startswith("error: cancelled: ")


def test_version_and_purge_validation() -> None:
    shown = sse_relay("--version")
    assert shown.returncode == 0
    from importlib.metadata import version

    assert shown.stdout.strip() == f"sse-relay {version('sse-relay')}"
    refused = sse_relay("purge", "--older-than-days", "-1")
    assert refused.returncode == 2
    assert "--older-than-days: must be a finite number of days, 0 or more (got -1)" in refused.stderr


def _env(stack: Stack) -> dict[str, str]:
    return {**stack.env, "SSE_RELAY_URL": stack.api_url}
