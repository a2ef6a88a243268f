"""deploy/nginx in a real nginx before two API instances: SSE passes unbuffered and uncompressed, and a client
whose instance is SIGKILLed resumes through nginx on the other one with Last-Event-ID, losing nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.embedded_redis import free_port
from tests.support.nginx import Nginx, running_nginx
from tests.support.sse import EventReader, Received, assert_well_formed, read_events, text_of
from tests.support.stack import Process, Stack, _get_ok, wait_for

LONG = "".join(f"<{i:02d}·ñ>" for i in range(80))
SLOW = "demo@chunk=5,delay_ms=30"


@pytest.fixture
def two_apis(stack: Stack) -> Iterator[dict[int, Process]]:
    """Two more API instances on the shared stack's Redis, worker and store."""
    apis: dict[int, Process] = {}
    for name in ("api-nginx-a", "api-nginx-b"):
        port = free_port()
        apis[port] = stack.start(name, ["-m", "uvicorn", "api.main:app", "--port", str(port)])
    for port, process in apis.items():
        wait_for(lambda port=port: _get_ok(f"http://127.0.0.1:{port}/readyz"), process.name, process)
    yield apis
    for process in apis.values():
        process.stop()


@pytest.fixture
def nginx(two_apis: dict[int, Process], tmp_path: Path) -> Iterator[Nginx]:
    with running_nginx(tmp_path, list(two_apis)) as running:
        yield running


def _serving(apis: dict[int, Process], request_line: str) -> Process:
    """The instance whose access log shows the request (uvicorn logs it when the response starts)."""
    serving = [p for p in apis.values() if request_line in p.log.read_text(errors="replace")]
    assert len(serving) == 1, f"expected one instance to serve {request_line!r}, got {[p.name for p in serving]}"
    return serving[0]


async def test_a_stream_resumes_through_nginx_on_the_other_instance_after_a_kill(
    nginx: Nginx, two_apis: dict[int, Process]
) -> None:
    body = {"prompt": f"echo:{LONG}", "model": SLOW}
    before: list[Received] = []
    async with (
        httpx.AsyncClient(base_url=nginx.url, timeout=30) as client,
        client.stream("POST", "/v1/generations", json=body) as response,
    ):
        assert response.status_code == 200
        generation_id = response.headers["x-generation-id"]
        reader = EventReader(response)
        before += await reader.take(5)
        doomed = _serving(two_apis, "POST /v1/generations")
        doomed.kill()
        # nginx ends the client's response when its upstream vanishes; whatever arrived first still counts.
        with contextlib.suppress(httpx.RemoteProtocolError, httpx.ReadError):
            before += await reader.take()
    assert not [e for e in before if e.type in ("done", "error")], "the stream ended before the kill"

    url = f"/v1/generations/{generation_id}/events"
    async with (
        httpx.AsyncClient(base_url=nginx.url, timeout=30) as client,
        client.stream("GET", url, headers={"Last-Event-ID": before[-1].id}) as response,
    ):
        assert response.status_code == 200
        rest = await read_events(response)
    survivor = next(p for p in two_apis.values() if p is not doomed)
    assert f"GET {url}" in survivor.log.read_text(errors="replace")
    assert all(e.id > before[-1].id for e in rest)
    events = before + rest
    assert_well_formed(events)
    assert text_of(events) == LONG


async def test_event_streams_pass_uncompressed_and_unbuffered_while_json_may_be_gzipped(nginx: Nginx) -> None:
    headers = {"Accept-Encoding": "gzip"}
    async with (
        httpx.AsyncClient(base_url=nginx.url, timeout=30, headers=headers) as client,
        client.stream("POST", "/v1/generations", json={"prompt": f"echo:{LONG}", "model": SLOW}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        # The first events arrive while the generation is still running: nothing held them back.
        first = await EventReader(response).take(3)
        assert len(first) == 3 and not [e for e in first if e.type in ("done", "error")]
    async with httpx.AsyncClient(base_url=nginx.url, timeout=30, headers=headers) as client:
        spec = await client.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.headers.get("content-encoding") == "gzip"
    assert spec.json()["openapi"]


async def test_an_oversized_body_gets_the_apis_json_413_through_nginx(nginx: Nginx) -> None:
    prompt = "x" * 1_100_000  # above MAX_BODY_BYTES (1 MiB), below nginx's own ceiling
    async with httpx.AsyncClient(base_url=nginx.url, timeout=30) as client:
        response = await client.post("/v1/generations", json={"prompt": prompt})
    assert response.status_code == 413
    assert response.json()["error"]["code"]
