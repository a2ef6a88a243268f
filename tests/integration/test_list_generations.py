"""GET /v1/generations against the real stack: a caller's own generations only, newest first, live (running,
only in Redis) and finished (in the store) together, filtered by status, paged by an opaque cursor; and the
same through the Python client and `sse-relay list`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from cli.embedded_redis import free_port
from sse_relay import Generation, RelayClient
from tests.support.stack import ROOT, Stack, _get_ok, wait_for

KEY_A, KEY_B = "list-key-a", "list-key-b"


@pytest.fixture(scope="module")
def keyed_api(stack: Stack) -> Iterator[str]:
    """A second API on the shared stack (same Redis, worker and store) with bearer keys: two callers."""
    port = free_port()
    env = {**stack.env, "SSE_RELAY_API_KEYS": f"{KEY_A},{KEY_B}"}
    api = stack.start("api-keyed", ["-m", "uvicorn", "api.main:app", "--port", str(port)], env=env)
    wait_for(lambda: _get_ok(f"http://127.0.0.1:{port}/readyz"), "the keyed API", api)
    yield f"http://127.0.0.1:{port}"
    api.stop()


def everything(relay: RelayClient, status: str | None = None, limit: int = 2) -> list[Generation]:
    items: list[Generation] = []
    cursor = None
    while True:
        page = relay.list(status=status, limit=limit, after=cursor)
        assert len(page.items) <= limit
        items += page.items
        if page.next is None:
            return items
        cursor = page.next


def test_a_caller_lists_its_own_generations_newest_first(keyed_api: str) -> None:
    with RelayClient(keyed_api, api_key=KEY_A) as a, RelayClient(keyed_api, api_key=KEY_B) as b:
        other = b.generate("not yours").id
        finished = [a.generate(f"number {n}").id for n in range(3)]
        failed = a.stream("Hello", model="status-401")
        list(failed)
        running = a.start("echo:" + "slow " * 200, model="demo@chunk=1,delay_ms=100")
        wait_for(lambda: a.get(running).status == "running", "the generation to run")

        listed = everything(a)
        assert [g.id for g in listed] == [running, failed.id, *reversed(finished)]
        assert [g.status for g in listed] == ["running", "error", "done", "done", "done"]
        assert listed[1].error == {"code": "upstream_auth", "message": listed[1].error["message"]}  # type: ignore[index]
        assert other not in [g.id for g in listed]
        assert [g.id for g in b.list().items] == [other]
        assert [g.id for g in everything(a, "done", limit=1)] == list(reversed(finished))
        assert [g.id for g in a.list(status="running").items] == [running]

        # Finishing moves it from Redis to the store; it keeps its place in the order.
        a.cancel(running)
        wait_for(lambda: a.list(limit=1).items[0].status == "cancelled", "the cancel to show")
        assert [g.id for g in everything(a, limit=3)] == [g.id for g in listed]

        # `sse-relay list` prints the same, one generation per line.
        shown = subprocess.run(
            [sys.executable, "-m", "cli.main", "list", "--url", keyed_api, "--api-key", KEY_A, "--limit", "2"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert [line.split()[:2] for line in shown.stdout.splitlines()] == [
            [running, "cancelled"],
            [failed.id, "error"],
        ]
        assert "sse-relay list --after " in shown.stderr


def test_listing_refuses_bad_parameters_and_strangers(keyed_api: str) -> None:
    with httpx.Client(base_url=keyed_api, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        bad_cursor = http.get("/v1/generations", params={"after": "not-a-cursor"})
        assert (bad_cursor.status_code, bad_cursor.json()["error"]["code"]) == (400, "invalid_cursor")
        assert http.get("/v1/generations", params={"limit": 0}).status_code == 422
        assert http.get("/v1/generations", params={"status": "finished"}).status_code == 422
        assert http.get("/v1/generations", headers={"Authorization": ""}).status_code == 401
