"""What the real processes write to their logs: no read token in the access log, no line twice, no HTTP noise."""

from __future__ import annotations

import httpx

from shared.jobs import JOB_FUNCTION
from tests.support.sse import read_events
from tests.support.stack import Stack, wait_for


async def test_read_tokens_never_reach_the_access_log(client: httpx.AsyncClient, stack: Stack) -> None:
    created = (await client.post("/v1/generations", json={"prompt": "echo:tokens", "background": True})).json()
    token = created["token"]
    assert token and f"token={token}" in created["events_url"]
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as browser:  # no Authorization: the token only
        assert (await browser.get(f"{created['url']}?token={token}")).status_code == 200
        async with browser.stream("GET", created["events_url"]) as response:
            assert response.status_code == 200
            await read_events(response)
    api_log = stack.processes["api"].log
    # The positive signal: uvicorn has written the access line of the events request.
    wait_for(lambda: f"{created['id']}/events?token=[redacted]" in api_log.read_text(), "the access log line")
    logs = stack.logs()
    assert token not in logs
    assert f"{created['id']}?token=[redacted]" in api_log.read_text()


async def test_a_worker_writes_each_arq_line_once(client: httpx.AsyncClient, stack: Stack) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "echo:once"}) as response:
        generation_id = response.headers["x-generation-id"]
        await read_events(response)
    worker_log = stack.processes["worker"].log

    def lines(marker: str) -> list[str]:
        return [
            line
            for line in worker_log.read_text().splitlines()
            if f"{generation_id}:{JOB_FUNCTION}" in line and marker in line
        ]

    wait_for(lambda: bool(lines("←")), "arq to log the job's end")  # its last line about this job
    assert len(lines("→")) == 1, lines("→")
    assert len(lines("←")) == 1, lines("←")
    # The SDK's HTTP library logs nothing per provider request: the worker's own line about it is there.
    text = worker_log.read_text()
    assert f"generation {generation_id} [-] ended done" in text
    assert "HTTP Request:" not in text
