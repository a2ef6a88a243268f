"""API SIGTERM mid-stream: open streams end promptly, the process exits, and the client resumes on another
API instance from its Last-Event-ID with nothing lost and nothing repeated."""

from __future__ import annotations

import contextlib
import time

import httpx

from cli.embedded_redis import free_port
from tests.support.sse import EventReader, Received, assert_well_formed, read_events, text_of
from tests.support.stack import Stack, _get_ok, wait_for

LONG = "".join(f"<{i:02d}>" for i in range(80))


async def test_sigterm_ends_open_streams_and_the_client_resumes_elsewhere(stack: Stack) -> None:
    port = free_port()
    doomed = stack.start(
        "api-doomed",
        ["-m", "uvicorn", "api.main:app", "--port", str(port), "--timeout-graceful-shutdown", "5"],
    )
    wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/readyz"), "the second API", doomed)

    body = {"prompt": f"echo:{LONG}", "model": "demo@chunk=4,delay_ms=40"}
    before: list[Received] = []
    url = f"http://127.0.0.1:{port}"
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as first_api,
        first_api.stream("POST", "/v1/generations", json=body) as response,
    ):
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        before += await reader.take(5)
        stopped_at = time.monotonic()
        doomed.popen.terminate()
        # The server drops the stream (a reconnect trigger for EventSource and the demo page): it must not hang.
        with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
            before += await reader.take()
    ended_after = time.monotonic() - stopped_at
    doomed.popen.wait(timeout=10)
    assert doomed.popen.returncode is not None
    # Still streaming upstream when the API left: the generation did not end with the API.
    assert not [e for e in before if e.type in ("done", "error")]
    assert ended_after < 5, f"the stream stayed open {ended_after:.1f} s after SIGTERM"

    async with (
        stack.client() as other_api,
        other_api.stream(
            "GET", f"/v1/generations/{generation_id}/events", headers={"Last-Event-ID": before[-1].id}
        ) as response,
    ):
        rest = await read_events(response)
    events = before + rest
    assert_well_formed(events)
    assert text_of(events) == LONG
