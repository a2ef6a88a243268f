"""Bad input gets a JSON error with the right status from the real server: never a 500, never a hang."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.sse import read_events, text_of


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({}, "validation_error"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "validation_error"),
        ({"messages": []}, "validation_error"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "validation_error"),
        ({"prompt": ""}, "validation_error"),
        ({"prompt": 5}, "validation_error"),
        ({"prompt": "x", "temperature": 9}, "validation_error"),
        ({"prompt": "x", "max_tokens": 0}, "validation_error"),
        # The OpenAPI document says integer / boolean: no coercion from strings or floats (found by fuzzing).
        ({"prompt": "x", "max_tokens": "5"}, "validation_error"),
        ({"prompt": "x", "max_tokens": 5.0}, "validation_error"),
        ({"prompt": "x", "background": "true"}, "validation_error"),
        ({"prompt": "x", "temperature": "0.5"}, "validation_error"),
        ({"prompt": "x", "surprise": 1}, "validation_error"),
        ({"prompt": "x", "metadata": [1]}, "validation_error"),
        ({"prompt": "x", "on_complete": "nope:nothing"}, "unknown_hook"),
        ([1, 2], "validation_error"),
        ("just a string", "validation_error"),
    ],
)
async def test_invalid_bodies_get_422(client: httpx.AsyncClient, payload: Any, code: str) -> None:
    _assert_error(await client.post("/v1/generations", json=payload), 422, code)


async def test_malformed_json_gets_400(client: httpx.AsyncClient) -> None:
    # Includes nesting deep enough to make the JSON parser recurse out: still a 400, not a 500.
    for raw in (b"{not json", b"", b"   ", b"\xff\xfe", b"[" * 100_000):
        response = await client.post("/v1/generations", content=raw, headers={"content-type": "application/json"})
        _assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
async def test_form_bodies_get_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await client.post("/v1/generations", content=b"prompt=hi", headers={"content-type": content_type})
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", [None, "text/plain;charset=UTF-8", "application/json; charset=utf-8"])
async def test_json_is_accepted_as_text_plain_or_without_content_type(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request("POST", "/v1/generations", content=b'{"prompt": "echo:ok"}', headers=headers)
    assert ("content-type" in request.headers) == (content_type is not None)
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200
        assert text_of(await read_events(response)) == "ok"
    finally:
        await response.aclose()


async def test_oversized_body_gets_413_from_content_length(client: httpx.AsyncClient) -> None:
    big = b'{"prompt": "' + b"a" * (1_048_576 + 10) + b'"}'
    _assert_error(await client.post("/v1/generations", content=big), 413, "body_too_large")


async def test_oversized_chunked_body_gets_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"a" * 32_768
        yield b'"}'

    _assert_error(await client.post("/v1/generations", content=chunks()), 413, "body_too_large")


async def test_unknown_route_and_wrong_method_are_json(client: httpx.AsyncClient) -> None:
    _assert_error(await client.get("/v2/nothing"), 404, "not_found")
    _assert_error(await client.delete("/v1/generations"), 405, "method_not_allowed")


async def test_operations_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert "sse_relay_generations_created_total" in metrics.text
    page = await client.get("/")
    assert page.status_code == 200 and "<textarea" in page.text and "/static/sse-relay.js" in page.text
    module = await client.get("/static/sse-relay.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert "export class RelayClient" in module.text
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/generations"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/GenerationCreate"
    assert "Message" in schema["components"]["schemas"]
    assert (await client.get("/docs")).status_code == 200
