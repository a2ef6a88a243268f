"""Leaving and rejoining a generation: Last-Event-ID (header or query) resumes with no loss and no duplicate."""

from __future__ import annotations

import httpx
import pytest

from tests.support.sse import Received, assert_well_formed, read_events, text_of

LONG = "".join(f"[{i:03d}·é]" for i in range(60))
SLOW = "demo@chunk=6,delay_ms=15"


async def _start(client: httpx.AsyncClient) -> tuple[str, list[Received]]:
    """Start a slow generation live and drop the connection after a few events."""
    async with client.stream("POST", "/v1/generations", json={"prompt": f"echo:{LONG}", "model": SLOW}) as response:
        generation_id = response.headers["x-generation-id"]
        first = await read_events(response, limit=5)
    return generation_id, first


@pytest.mark.parametrize("via", ["header", "query"])
async def test_resume_after_a_dropped_connection_loses_and_repeats_nothing(client: httpx.AsyncClient, via: str) -> None:
    generation_id, first = await _start(client)
    assert len(first) == 5 and first[-1].type == "content"
    last = first[-1].id
    url = f"/v1/generations/{generation_id}/events"
    if via == "header":
        request = client.stream("GET", url, headers={"Last-Event-ID": last})
    else:
        request = client.stream("GET", url, params={"last_event_id": last})
    async with request as response:
        assert response.status_code == 200
        rest = await read_events(response)
    assert all(e.id > last for e in rest) and rest
    events = first + rest
    assert_well_formed(events)
    assert text_of(events) == LONG


async def test_header_wins_over_query_parameter(client: httpx.AsyncClient) -> None:
    generation_id, first = await _start(client)
    url = f"/v1/generations/{generation_id}/events"
    async with client.stream(
        "GET", url, headers={"Last-Event-ID": first[-1].id}, params={"last_event_id": first[0].id}
    ) as response:
        rest = await read_events(response)
    assert text_of(first + rest) == LONG


async def test_events_without_resume_point_replay_from_the_beginning(client: httpx.AsyncClient) -> None:
    generation_id, first = await _start(client)
    async with client.stream("GET", f"/v1/generations/{generation_id}/events") as response:
        everything = await read_events(response)
    assert [e.id for e in everything[:5]] == [e.id for e in first]
    assert_well_formed(everything)
    assert text_of(everything) == LONG


async def test_resume_from_the_terminal_event_answers_204(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "echo:fin"}) as response:
        events = await read_events(response)
        generation_id = response.headers["x-generation-id"]
    terminal = events[-1].id
    url = f"/v1/generations/{generation_id}/events"
    assert (await client.get(url, headers={"Last-Event-ID": terminal})).status_code == 204
    assert (await client.get(url, params={"last_event_id": terminal})).status_code == 204
    # Resuming from just before the terminal event still delivers it.
    async with client.stream("GET", url, headers={"Last-Event-ID": events[-2].id}) as response:
        tail = await read_events(response)
    assert [e.id for e in tail] == [terminal]


@pytest.mark.parametrize("bad", ["abc", "1-2-3", "-1", "12345", "99999999999999999999999-0", "1-a"])
async def test_malformed_last_event_id_is_a_400(client: httpx.AsyncClient, bad: str) -> None:
    created = (await client.post("/v1/generations", json={"prompt": "echo:x", "background": True})).json()
    for response in (
        await client.get(created["events_url"], headers={"Last-Event-ID": bad}),
        await client.get(created["events_url"], params={"last_event_id": bad}),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_last_event_id"


@pytest.mark.parametrize("unknown", ["gen_" + "0" * 32, "nope", "gen_../../etc", "x" * 300])
async def test_unknown_generation_is_a_404_everywhere(client: httpx.AsyncClient, unknown: str) -> None:
    for method, path in (
        ("GET", f"/v1/generations/{unknown}/events"),
        ("GET", f"/v1/generations/{unknown}"),
        ("POST", f"/v1/generations/{unknown}/cancel"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
