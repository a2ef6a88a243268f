"""/static/sse-relay.js in a real Chromium: SSE parsing and resume rules on scripted bytes, then the real stack
through an API SIGKILL and a restart on the same port."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from playwright.async_api import Page

from cli.embedded_redis import free_port
from tests.support.stack import Stack, _get_ok, wait_for

LONG = "".join(f"<{i:02d}>" for i in range(80))

# A fetch that answers from a script: each response is a status and a list of byte chunks; the calls are recorded.
SCRIPTED = """
async ([responses, body]) => {
  const { RelayClient } = await import("/static/sse-relay.js");
  const calls = [];
  const scriptedFetch = async (url, init = {}) => {
    calls.push({ method: init.method ?? "GET", url: String(url), headers: init.headers ?? {} });
    const next = responses.shift();
    const stream = new ReadableStream({
      start(controller) {
        for (const chunk of next.chunks) controller.enqueue(new Uint8Array(chunk));
        controller.close();
      },
    });
    const headers = { "Content-Type": "text/event-stream", "X-Generation-Id": "gen_scripted" };
    return new Response(next.status === 204 ? null : stream, { status: next.status, headers });
  };
  const relay = new RelayClient("", { fetch: scriptedFetch, backoffMs: 1 });
  const events = [];
  try {
    const result = await relay.generate(body, { onEvent: (event) => events.push(event) });
    return { result, events, calls };
  } catch (error) {
    return { error: { name: error.name, code: error.code, message: error.message }, events, calls };
  }
}
"""


def frame(event_id: str, payload: dict[str, Any]) -> str:
    return f"id: {event_id}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def done(text: str, sha256: str | None = None) -> dict[str, Any]:
    digest = sha256 or hashlib.sha256(text.encode()).hexdigest()
    data = {"finish_reason": "stop", "usage": None, "length": len(text), "sha256": digest}
    return {"type": "done", "data": data}


def split_bytes(text: str, *cuts: int) -> list[list[int]]:
    """The UTF-8 bytes of `text` cut at the given byte offsets (mid-character on purpose)."""
    raw = text.encode()
    bounds = [0, *cuts, len(raw)]
    return [list(raw[a:b]) for a, b in itertools.pairwise(bounds)]


async def run_scripted(page: Page, stack: Stack, responses: list[dict[str, Any]]) -> dict[str, Any]:
    await page.goto(f"{stack.api_url}/")
    result: dict[str, Any] = await page.evaluate(SCRIPTED, [responses, {"prompt": "hi"}])
    return result


async def test_parsing_and_resume_rules_on_scripted_bytes(page: Page, stack: Stack) -> None:
    final = "🌍 naïve 你好"
    # The POST's stream: a comment, CRLF and lone-CR line ends, a JSON payload spread over two data lines,
    # "é" cut between its two bytes, a CRLF cut between chunks; then the connection ends with no terminal.
    first = (
        ": ping\r\n\r\n"
        'id: 1-0\r\ndata: {"type":"content","data":"hé"}\r\n\r\n'
        'id: 2-0\ndata: {"type":\ndata: "content","data":" 你"}\n\n'
        'id: 3-0\rdata: {"type":"content","data":"!"}\r\r'
    )
    cut_in_e = first.encode().index("é".encode()) + 1
    crlf = first.encode().index(b"}\r\n\r\n") + 2
    # The reconnect replays 3-0 (already seen: skipped), then a reset and the text again, "🌍" cut in two.
    second = (
        frame("3-0", {"type": "content", "data": "!"})
        + frame("4-0", {"type": "reset", "data": {"attempt": 2, "reason": "worker_lost"}})
        + frame("5-0", {"type": "content", "data": final})
        + frame("6-0", done(final))
    )
    emoji = second.encode().index("🌍".encode()) + 2
    responses = [
        {"status": 503, "chunks": []},  # the POST meets an API that is restarting: sent again, same key
        {"status": 200, "chunks": split_bytes(first, cut_in_e, crlf)},
        {"status": 503, "chunks": []},  # an API restarting: retried
        {"status": 200, "chunks": split_bytes(second, emoji)},
    ]
    outcome = await run_scripted(page, stack, responses)
    assert "error" not in outcome, outcome
    assert outcome["result"]["text"] == final
    assert outcome["result"]["id"] == "gen_scripted"
    seen = [(event["id"], event["type"], event.get("data")) for event in outcome["events"]]
    assert seen[:3] == [("1-0", "content", "hé"), ("2-0", "content", " 你"), ("3-0", "content", "!")]
    assert [event_id for event_id, _, _ in seen] == ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]
    calls = outcome["calls"]
    assert [call["method"] for call in calls] == ["POST", "POST", "GET", "GET"]
    keys = {call["headers"]["Idempotency-Key"] for call in calls[:2]}
    assert len(keys) == 1 and len(keys.pop()) >= 32
    assert calls[2]["url"].endswith("/v1/generations/gen_scripted/events")
    assert [call["headers"].get("Last-Event-ID") for call in calls[2:]] == ["3-0", "3-0"]


async def test_a_done_that_does_not_match_the_text_is_an_integrity_error(page: Page, stack: Stack) -> None:
    # One astral character: its JavaScript `length` is 2 and its code point length 1; the length check must pass,
    # so the failure is the digest's.
    text = "\U0001d49c and more"
    wrong = frame("1-0", {"type": "content", "data": text}) + frame("2-0", done(text, sha256="0" * 64))
    outcome = await run_scripted(page, stack, [{"status": 200, "chunks": split_bytes(wrong)}])
    assert outcome["error"]["code"] == "integrity_mismatch", outcome
    assert "sha256" in outcome["error"]["message"]


async def test_an_error_terminal_is_thrown_with_its_code_and_an_http_error_is_not_retried(
    page: Page, stack: Stack
) -> None:
    failed = frame("1-0", {"type": "error", "error": "Nope.", "code": "upstream_auth", "data": {"retryable": False}})
    outcome = await run_scripted(page, stack, [{"status": 200, "chunks": split_bytes(failed)}])
    assert outcome["error"] == {"name": "RelayError", "code": "upstream_auth", "message": "Nope."}
    refused = json.dumps({"error": {"code": "invalid_body", "message": "prompt is required"}})
    outcome = await run_scripted(page, stack, [{"status": 422, "chunks": split_bytes(refused)}])
    assert outcome["error"]["code"] == "invalid_body"
    assert len(outcome["calls"]) == 1


# Enough reconnects to outlast a restart on a loaded machine (uvicorn's start has taken ~20 s on 2 busy cores).
GENERATE_IN_PAGE = """
(body) => {
  window.seen = [];
  window.retries = [];
  window.outcome = import("/static/sse-relay.js").then(({ RelayClient }) =>
    new RelayClient("", { backoffMs: 200, retries: 60 })
      .generate(body, {
        onEvent: (event) => window.seen.push(event),
        onRetry: ({ attempt }) => window.retries.push(attempt),
      })
  );
}
"""


async def test_the_module_keeps_going_through_an_api_sigkill_and_restart(page: Page, stack: Stack) -> None:
    port = free_port()
    args = ["-m", "uvicorn", "api.main:app", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    first = stack.start(f"api-{port}", args)
    wait_for(lambda: _get_ok(f"{url}/readyz"), "the API", first)
    await page.goto(f"{url}/")
    await page.evaluate(GENERATE_IN_PAGE, {"prompt": f"echo:{LONG}", "model": "demo@chunk=4,delay_ms=40"})
    await page.wait_for_function("window.seen.length >= 5", timeout=30_000)
    first.kill()
    before = await page.evaluate("window.seen.map((event) => event.type)")
    assert "done" not in before and "error" not in before
    second = stack.start(f"api-{port}-again", args)
    try:
        wait_for(lambda: _get_ok(f"{url}/readyz"), "the restarted API", second)
        result = await page.evaluate("window.outcome")
        events = await page.evaluate("window.seen")
    finally:
        second.stop()
    assert result["text"] == LONG
    ids = [event["id"] for event in events]
    assert ids == sorted(ids, key=lambda i: tuple(int(p) for p in i.split("-"))) and len(set(ids)) == len(ids)
    assert [event["type"] for event in events].count("done") == 1
    assert len(events) > len(before)
    # It did reconnect (the first tries met a dead port), and then carried on from where it was.
    assert await page.evaluate("window.retries.length") >= 1


DETACH_AND_REATTACH = """
async (body) => {
  const { RelayClient } = await import("/static/sse-relay.js");
  const relay = new RelayClient("");
  const controller = new AbortController();
  const first = relay.stream(body, { signal: controller.signal });
  const before = [];
  let stopped = null;
  try {
    for await (const event of first) {
      before.push(event);
      if (before.length === 3) controller.abort();
    }
  } catch (error) {
    stopped = error.name;
  }
  const after = [];
  for await (const event of relay.events(first.id, { lastEventId: first.lastEventId })) after.push(event);
  return { stopped, id: first.id, before, after };
}
"""


async def test_an_abort_signal_detaches_and_events_reattaches_where_it_left(page: Page, stack: Stack) -> None:
    await page.goto(f"{stack.api_url}/")
    body = {"prompt": f"echo:{LONG}", "model": "demo@chunk=4,delay_ms=20"}
    outcome = await page.evaluate(DETACH_AND_REATTACH, body)
    assert outcome["stopped"] == "AbortError"
    assert len(outcome["before"]) == 3
    # Detaching did not cancel: the generation ran on, and the rest came exactly once after the last event seen.
    events = outcome["before"] + outcome["after"]
    assert "".join(event["data"] for event in events if event["type"] == "content") == LONG
    assert events[-1]["type"] == "done"
    ids = [tuple(int(part) for part in event["id"].split("-")) for event in events]
    assert ids == sorted(set(ids))
