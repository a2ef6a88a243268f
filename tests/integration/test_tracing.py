"""OpenTelemetry across the two real processes: a POST's trace (its W3C traceparent from the client) continues in
the worker through the job, so one trace holds request -> enqueue -> job -> provider call -> terminal event."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.sse import read_events, text_of
from tests.support.stack import ROOT, Stack, running_stack

# OTLP span kinds (opentelemetry-proto's Span.SpanKind).
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


@pytest.fixture(scope="module")
def traced(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Receiver]]:
    with otlp_receiver() as (endpoint, receiver):
        # Export every 100 ms instead of every 5 s: the test waits for spans, not for a batch timer.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with running_stack(redis_url, tmp_path_factory.mktemp("traced-stack"), **env) as stack:
            yield stack, receiver


async def spans_of(receiver: Receiver, trace_id: str, wanted: set[str], timeout: float = 20.0) -> list[ReceivedSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.of_trace(trace_id)
        missing = wanted - {span.name for span in spans}
        if not missing:
            return spans
        assert time.monotonic() < deadline, f"missing spans: {missing}; got {spans}"
        await asyncio.sleep(0.05)


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, spans)
    return found[0]


async def test_one_trace_spans_request_queue_worker_provider_and_terminal(traced: tuple[Stack, Receiver]) -> None:
    stack, receiver = traced
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
    text = "traced answer " * 3
    body = {"prompt": f"echo:{text}", "model": "demo@chunk=5,delay_ms=1"}
    async with stack.client() as client, client.stream("POST", "/v1/generations", json=body, headers=headers) as r:
        generation_id = r.headers["x-generation-id"]
        events = await read_events(r)
    assert events[-1].type == "done" and text_of(events) == text
    async with httpx.AsyncClient(base_url=stack.upstream_url, timeout=10) as upstream:
        provider_received_ns = (await upstream.get("/_fake/stats")).json()["last_request_ns"]

    model_span = "chat demo@chunk=5,delay_ms=1"
    wanted = {"POST /v1/generations", "sse_relay.enqueue", "sse_relay.generation", model_span, "sse_relay.terminal"}
    spans = await spans_of(receiver, trace_id, wanted)
    server = one(spans, "POST /v1/generations")
    enqueue = one(spans, "sse_relay.enqueue")
    job = one(spans, "sse_relay.generation")
    provider = one(spans, model_span)
    terminal = one(spans, "sse_relay.terminal")

    assert (server.service, server.kind, server.parent_id) == ("sse-relay-api", SERVER, caller_span)
    assert (enqueue.service, enqueue.kind, enqueue.parent_id) == ("sse-relay-api", PRODUCER, server.span_id)
    # The worker's spans: the job is the enqueue's child, across processes; the rest are the job's.
    assert (job.service, job.kind, job.parent_id) == ("sse-relay-worker", CONSUMER, enqueue.span_id)
    assert job.attributes["sse_relay.generation_id"] == generation_id
    assert job.attributes["sse_relay.outcome"] == "done"
    assert (provider.service, provider.kind, provider.parent_id) == ("sse-relay-worker", CLIENT, job.span_id)
    assert provider.attributes["gen_ai.request.model"] == "demo@chunk=5,delay_ms=1"
    # The request goes out when the job is taken, before arq runs it (worker/early.py): the job's span and the
    # provider call's both start then, so the call's span covers its whole wait and the job's span holds it.
    assert job.start_ns == provider.start_ns < provider_received_ns
    assert (terminal.parent_id, terminal.attributes["sse_relay.status"], terminal.error) == (job.span_id, "done", False)
    # No secret in what is exported: the provider key, and no prompt text either.
    exported = b"".join(receiver.bodies)
    assert stack.secret.encode() not in exported
    assert b"traced answer" not in exported


async def test_a_provider_error_marks_the_spans(traced: tuple[Stack, Receiver]) -> None:
    stack, receiver = traced
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    async with (
        stack.client() as client,
        client.stream(
            "POST", "/v1/generations", json={"prompt": "x", "model": "status-401"}, headers=headers
        ) as response,
    ):
        events = await read_events(response)
    assert events[-1].type == "error"
    spans = await spans_of(receiver, trace_id, {"chat status-401", "sse_relay.terminal"})
    assert one(spans, "chat status-401").error
    assert one(spans, "sse_relay.terminal").error


def test_without_an_endpoint_no_opentelemetry_sdk_is_imported() -> None:
    """Tracing off costs nothing: the SDK (and the exporter, the instrumentation) are never imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys, api.main, worker.main\n"
        "from shared import tracing\n"
        "assert not tracing.active()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter',"
        " 'opentelemetry.instrumentation'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


async def test_a_read_token_in_the_query_string_is_not_exported(traced: tuple[Stack, Receiver]) -> None:
    """Browsers send the read token as `?token=`; the server span's URL attributes carry it redacted."""
    stack, receiver = traced
    trace_id, token = secrets.token_hex(16), "rt_" + secrets.token_hex(12)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    async with stack.client() as client:
        created = (await client.post("/v1/generations", json={"prompt": "echo:x", "background": True})).json()
        view = await client.get(f"/v1/generations/{created['id']}?token={token}&x=1", headers=headers)
    assert view.status_code == 200
    spans = await spans_of(receiver, trace_id, {"GET /v1/generations/{generation_id}"})
    server = one(spans, "GET /v1/generations/{generation_id}")
    urls = [value for name, value in server.attributes.items() if name in ("http.url", "url.full", "url.query")]
    assert urls and all("token=[redacted]" in str(url) and "x=1" in str(url) for url in urls)
    assert token.encode() not in b"".join(receiver.bodies)
