"""api.body + api.limits + api.errors through a minimal FastAPI app: media types, JSON, validation, body size."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from api import errors
from api.body import generation_create
from api.limits import BodySizeLimit
from api.schemas import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, GenerationCreate

MAX_BYTES = 100


def _app() -> FastAPI:
    app = FastAPI()
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BYTES)

    @app.post("/gen")
    async def create(body: Annotated[GenerationCreate, Depends(generation_create)]) -> dict[str, Any]:
        return body.model_dump(exclude_none=True)

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def _assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


async def _post(client: httpx.AsyncClient, content: bytes, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return await client.post("/gen", content=content, headers=headers)


PROMPT = json.dumps({"prompt": "hi"}).encode()


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "text/plain"])
async def test_json_body_is_accepted_with_json_or_text_content_type(
    client: httpx.AsyncClient, content_type: str
) -> None:
    response = await _post(client, PROMPT, content_type)
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": "hi", "background": False}


async def test_json_body_without_content_type_is_accepted(client: httpx.AsyncClient) -> None:
    response = await _post(client, PROMPT, None)
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == "hi"


async def test_parsed_model_keeps_all_fields(client: httpx.AsyncClient) -> None:
    payload = {"messages": [{"role": "user", "content": "é🌍"}], "temperature": 0.5, "metadata": {"k": 1}}
    response = await _post(client, json.dumps(payload, ensure_ascii=False).encode(), "application/json")
    assert response.status_code == 200, response.text
    assert response.json() == {**payload, "background": False}


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz", "Application/X-WWW-Form-Urlencoded"],
)
async def test_form_bodies_are_refused_with_415(client: httpx.AsyncClient, content_type: str) -> None:
    response = await _post(client, b"prompt=hi", content_type)
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded"])
async def test_json_sent_with_curl_d_s_form_content_type_is_accepted(
    client: httpx.AsyncClient, content_type: str
) -> None:
    # `curl -d '{"prompt":"hi"}'` labels its body application/x-www-form-urlencoded.
    response = await _post(client, PROMPT, content_type)
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == "hi"


async def test_multipart_is_refused_even_when_its_body_parses_as_json(client: httpx.AsyncClient) -> None:
    _assert_error(await _post(client, PROMPT, "multipart/form-data; boundary=xyz"), 415, "unsupported_media_type")


@pytest.mark.parametrize("content", [b"{not json", b'{"prompt": "hi"', b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000])
async def test_invalid_json_is_400(content: bytes) -> None:
    # A fresh app without the size limit, so the deeply nested body reaches the parser.
    app = FastAPI()
    errors.install(app)

    @app.post("/gen")
    async def create(body: Annotated[GenerationCreate, Depends(generation_create)]) -> dict[str, Any]:
        return body.model_dump(exclude_none=True)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await _post(http, content, "application/json")
    _assert_error(response, 400, "invalid_json")


async def test_invalid_json_is_400_through_the_size_limit(client: httpx.AsyncClient) -> None:
    _assert_error(await _post(client, b"{not json", "application/json"), 400, "invalid_json")


@pytest.mark.parametrize("content", [b"", b"   \n "])
async def test_empty_body_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    _assert_error(await _post(client, content, "application/json"), 400, "invalid_json")


@pytest.mark.parametrize(
    "payload",
    [
        [{"prompt": "hi"}],
        "hi",
        42,
        None,
        {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
        {},
        {"system": "be brief", "messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "hi", "temperature": 3},
        {"prompt": "hi", "unknown": 1},
        {"prompt": ""},
        {"messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
    ],
    ids=[
        "array",
        "string",
        "number",
        "null",
        "prompt-and-messages",
        "neither",
        "system-with-messages",
        "temperature-3",
        "unknown-field",
        "empty-prompt",
        "empty-messages",
        "bad-role",
    ],
)
async def test_invalid_payloads_are_422_validation_error(client: httpx.AsyncClient, payload: object) -> None:
    response = await _post(client, json.dumps(payload).encode(), "application/json")
    _assert_error(response, 422, "validation_error")


async def test_validation_message_names_the_field(client: httpx.AsyncClient) -> None:
    response = await _post(client, json.dumps({"prompt": "hi", "temperature": 3}).encode(), "application/json")
    _assert_error(response, 422, "validation_error")
    assert "temperature" in response.json()["error"]["message"]


async def test_body_at_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    base = len(json.dumps({"prompt": ""}))
    content = json.dumps({"prompt": "x" * (MAX_BYTES - base)}).encode()
    assert len(content) == MAX_BYTES
    response = await _post(client, content, "application/json")
    assert response.status_code == 200, response.text


async def test_body_over_the_limit_with_content_length_is_413(client: httpx.AsyncClient) -> None:
    content = json.dumps({"prompt": "x" * MAX_BYTES}).encode()
    response = await _post(client, content, "application/json")
    assert "content-length" in {name.lower() for name in response.request.headers}
    _assert_error(response, 413, "body_too_large")


async def test_body_over_the_limit_sent_chunked_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 20
        yield b'"}'

    response = await client.post("/gen", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in {name.lower() for name in response.request.headers}
    _assert_error(response, 413, "body_too_large")


async def test_small_body_sent_chunked_is_accepted(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt":'
        yield b' "hi"}'

    response = await client.post("/gen", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == "hi"


async def test_unknown_route_uses_the_error_shape(client: httpx.AsyncClient) -> None:
    _assert_error(await client.post("/nope", content=PROMPT), 404, "not_found")
    _assert_error(await client.get("/gen"), 405, "method_not_allowed")


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b'{"prompt": "hi", "metadata": {"note": "\\udfff"}}', "metadata.note"),
        (b'{"prompt": "hi", "metadata": {"\\ud800": 1}}', "metadata"),
        (b'{"prompt": "a\\udfffb"}', "prompt"),
        (b'{"messages": [{"role": "user", "content": "\\ud83d"}]}', "messages[0].content"),
        (b'{"prompt": "hi", "system": "\\udc00"}', "system"),
    ],
    ids=["metadata-value", "metadata-key", "prompt", "message", "system"],
)
async def test_lone_surrogate_escapes_are_422_naming_the_field(
    client: httpx.AsyncClient, content: bytes, where: str
) -> None:
    response = await _post(client, content, "application/json")
    _assert_error(response, 422, "validation_error")
    assert response.json()["error"]["message"].startswith(f"{where}: text must be valid Unicode")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_numbers_in_metadata_are_422(client: httpx.AsyncClient, number: str) -> None:
    content = f'{{"prompt": "hi", "metadata": {{"score": [1, {number}]}}}}'.encode()
    response = await _post(client, content, "application/json")
    _assert_error(response, 422, "validation_error")
    assert response.json()["error"]["message"].startswith("metadata.score[1]: numbers must be finite")


async def _post_big(payload: dict[str, Any]) -> httpx.Response:
    app = FastAPI()
    errors.install(app)

    @app.post("/gen")
    async def create(body: Annotated[GenerationCreate, Depends(generation_create)]) -> dict[str, Any]:
        return body.model_dump(exclude_none=True)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        return await http.post("/gen", json=payload)


async def test_metadata_nested_too_deep_is_422() -> None:
    assert (await _post_big({"prompt": "hi", "metadata": _nested(MAX_METADATA_DEPTH)})).status_code == 200
    for depth in (MAX_METADATA_DEPTH + 1, 300):
        response = await _post_big({"prompt": "hi", "metadata": _nested(depth)})
        _assert_error(response, 422, "validation_error")
        assert response.json()["error"]["message"] == f"metadata: nested {depth} levels deep; at most 16"


async def test_metadata_over_its_size_limit_is_422() -> None:
    fits = {"note": "é" * ((MAX_METADATA_BYTES - 20) // 2)}
    assert (await _post_big({"prompt": "hi", "metadata": fits})).status_code == 200
    response = await _post_big({"prompt": "hi", "metadata": {"note": "x" * MAX_METADATA_BYTES}})
    _assert_error(response, 422, "validation_error")
    assert "bytes as JSON; at most 16384" in response.json()["error"]["message"]


async def test_validator_messages_have_no_pydantic_prefix(client: httpx.AsyncClient) -> None:
    both = {"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}
    response = await _post(client, json.dumps(both).encode(), "application/json")
    _assert_error(response, 422, "validation_error")
    assert "Value error" not in response.json()["error"]["message"]
    assert "give exactly one of `prompt` and `messages`" in response.json()["error"]["message"]
