"""Each provider failure ends the generation with exactly one terminal `error` carrying its documented code."""

from __future__ import annotations

import httpx
import pytest

from tests.support.sse import assert_well_formed, read_events, text_of

CASES = [
    ("status-401", "upstream_auth", False),
    ("status-403", "upstream_auth", False),
    ("status-429@retry_after_ms=10", "upstream_rate_limited", True),
    ("status-500@retry_after_ms=10", "upstream_unavailable", True),
    ("status-503@retry_after_ms=10", "upstream_unavailable", True),
    ("status-400", "upstream_bad_request", False),
    ("no-such-model", "upstream_bad_request", False),
    ("malformed", "upstream_bad_response", True),
    ("truncate", "upstream_bad_response", True),
    ("cut", "upstream_unavailable", True),
    ("stall@after=2", "upstream_timeout", True),
    ("stall-before", "upstream_timeout", True),
]


@pytest.mark.parametrize(("model", "code", "retryable"), CASES, ids=[c[0] for c in CASES])
async def test_provider_failure_ends_with_one_terminal_error(
    client: httpx.AsyncClient, model: str, code: str, retryable: bool
) -> None:
    async with client.stream("POST", "/v1/generations", json={"prompt": "echo:abcdefghijkl", "model": model}) as r:
        generation_id = r.headers["x-generation-id"]
        events = await read_events(r)
    assert_well_formed(events)
    error = events[-1].data
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["data"] == {"retryable": retryable}
    assert isinstance(error["error"], str) and error["error"]
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert view["status"] == "error"
    assert view["error"]["code"] == code


async def test_mid_stream_failure_keeps_the_text_sent_before_it(client: httpx.AsyncClient) -> None:
    body = {"prompt": "echo:abcdefghijkl", "model": "cut@after=2,chunk=4"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        events = await read_events(response)
    assert text_of(events) == "abcdefgh"
    assert events[-1].data["code"] == "upstream_unavailable"


async def test_rate_limit_before_the_first_token_is_retried_then_succeeds(client: httpx.AsyncClient) -> None:
    body = {"prompt": "echo:after a retry", "model": "status-429@retry_after_ms=10,fail_times=1"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        events = await read_events(response)
    assert_well_formed(events)
    assert events[-1].type == "done"
    assert text_of(events) == "after a retry"


async def test_nul_characters_from_the_provider_are_dropped_everywhere(client: httpx.AsyncClient) -> None:
    # PostgreSQL text cannot hold U+0000: the stream, the done event and the stored record agree without it.
    body = {"prompt": "echo:a\u0000b\u0000c", "model": "demo@chunk=2"}
    async with client.stream("POST", "/v1/generations", json=body) as response:
        generation_id = response.headers["x-generation-id"]
        events = await read_events(response)
    assert text_of(events) == "abc"
    assert events[-1].data["data"]["length"] == 3
    view = (await client.get(f"/v1/generations/{generation_id}")).json()
    assert (view["status"], view["text"]) == ("done", "abc")
