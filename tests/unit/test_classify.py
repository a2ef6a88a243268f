"""worker.upstream.classify and describe on real SDK, httpx/httpx2, aiohttp and parsing exceptions."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable

import httpx
import httpx2
import openai
import pytest

from shared.config import Settings
from shared.errors import ErrorCode
from worker.upstream import classify, describe, make_client

URL = "http://x/v1/chat/completions"


def _request(headers: dict[str, str] | None = None) -> httpx2.Request:
    return httpx2.Request("POST", URL, headers=headers)


def _response(status: int, request: httpx2.Request | None = None) -> httpx2.Response:
    return httpx2.Response(status, request=request or _request())


def _status_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    return cls("m", response=_response(status), body=None)


@pytest.mark.parametrize(
    ("cls", "status", "expected"),
    [
        (openai.AuthenticationError, 401, ErrorCode.UPSTREAM_AUTH),
        (openai.PermissionDeniedError, 403, ErrorCode.UPSTREAM_AUTH),
        (openai.RateLimitError, 429, ErrorCode.UPSTREAM_RATE_LIMITED),
        (openai.InternalServerError, 500, ErrorCode.UPSTREAM_UNAVAILABLE),
        (openai.InternalServerError, 503, ErrorCode.UPSTREAM_UNAVAILABLE),
        (openai.BadRequestError, 400, ErrorCode.UPSTREAM_BAD_REQUEST),
        (openai.NotFoundError, 404, ErrorCode.UPSTREAM_BAD_REQUEST),
        (openai.UnprocessableEntityError, 422, ErrorCode.UPSTREAM_BAD_REQUEST),
        (openai.APIStatusError, 408, ErrorCode.UPSTREAM_TIMEOUT),
        (openai.APIStatusError, 502, ErrorCode.UPSTREAM_UNAVAILABLE),
        (openai.APIStatusError, 418, ErrorCode.UPSTREAM_BAD_REQUEST),
    ],
)
def test_classify_status_errors(cls: type[openai.APIStatusError], status: int, expected: ErrorCode) -> None:
    exc = _status_error(cls, status)
    assert exc.status_code == status
    assert classify(exc) is expected


def test_classify_connection_error_is_unavailable() -> None:
    assert classify(openai.APIConnectionError(request=_request())) is ErrorCode.UPSTREAM_UNAVAILABLE


def test_classify_sdk_timeout_is_timeout() -> None:
    # APITimeoutError subclasses APIConnectionError: the timeout check must come first.
    assert classify(openai.APITimeoutError(request=_request())) is ErrorCode.UPSTREAM_TIMEOUT


def test_classify_in_stream_api_error_is_unavailable() -> None:
    exc = openai.APIError("provider error inside the stream", _request(), body={"code": "overloaded"})
    assert classify(exc) is ErrorCode.UPSTREAM_UNAVAILABLE


@pytest.mark.parametrize(
    "exc",
    [httpx2.ReadTimeout("x"), httpx.ReadTimeout("x"), httpx2.ConnectTimeout("x"), httpx.PoolTimeout("x")],
    ids=["httpx2.ReadTimeout", "httpx.ReadTimeout", "httpx2.ConnectTimeout", "httpx.PoolTimeout"],
)
def test_classify_transport_timeouts_are_timeout(exc: Exception) -> None:
    assert classify(exc) is ErrorCode.UPSTREAM_TIMEOUT


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.RemoteProtocolError("x"),
        httpx.RemoteProtocolError("x"),
        httpx2.ReadError("x"),
        httpx.ConnectError("x"),
    ],
    ids=["httpx2.RemoteProtocolError", "httpx.RemoteProtocolError", "httpx2.ReadError", "httpx.ConnectError"],
)
def test_classify_transport_errors_are_unavailable(exc: Exception) -> None:
    assert classify(exc) is ErrorCode.UPSTREAM_UNAVAILABLE


def test_classify_json_decode_error_is_bad_response() -> None:
    try:
        json.loads("{not json")
    except json.JSONDecodeError as exc:
        assert classify(exc) is ErrorCode.UPSTREAM_BAD_RESPONSE
    else:  # pragma: no cover - json.loads must fail above
        pytest.fail("expected JSONDecodeError")


def test_classify_other_exceptions_are_internal() -> None:
    assert classify(RuntimeError("boom")) is ErrorCode.INTERNAL
    assert classify(ValueError("boom")) is ErrorCode.INTERNAL


def test_describe_status_error_hides_message_and_request() -> None:
    request = _request({"Authorization": "Bearer sk-secret123456"})
    exc = openai.AuthenticationError(
        "Incorrect API key provided: sk-secret123456.",
        response=_response(401, request),
        body={"code": "invalid_api_key", "message": "Incorrect API key provided: sk-secret123456."},
    )
    description = describe(exc)
    assert "sk-secret123456" not in description
    assert "secret" not in description
    assert "Bearer" not in description
    assert "AuthenticationError" in description
    assert "status=401" in description
    assert "provider_code=invalid_api_key" in description


def test_describe_without_body_names_type_and_status_only() -> None:
    request = _request({"Authorization": "Bearer sk-secret123456"})
    exc = openai.AuthenticationError("key sk-secret123456 rejected", response=_response(401, request), body=None)
    assert describe(exc) == "AuthenticationError status=401"


def test_describe_ignores_a_provider_code_that_is_not_an_identifier() -> None:
    exc = openai.BadRequestError("m", response=_response(400), body={"code": "sk-secret123456 bad"})
    description = describe(exc)
    assert "sk-secret123456" not in description
    assert description == "BadRequestError status=400"


def test_describe_plain_exception_is_its_type_name() -> None:
    assert describe(RuntimeError("sk-secret123456")) == "RuntimeError"


# The worker's own client (the SDK over its aiohttp transport) against real sockets: the transport maps every
# aiohttp connection error to a connect timeout, and classify must still tell a dead provider from a slow one.


async def _failure_of(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> Exception:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(openai_base_url=f"http://127.0.0.1:{port}/v1", upstream_max_retries=0)
    client = make_client(settings.model_copy(update={"upstream_read_timeout_s": 0.3}))
    try:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    except Exception as exc:
        return exc
    finally:
        await client.close()
        server.close()
    raise AssertionError("the request should have failed")


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


async def _say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.sleep(5)


async def test_a_provider_that_hangs_up_is_unavailable() -> None:
    assert classify(await _failure_of(_hang_up)) is ErrorCode.UPSTREAM_UNAVAILABLE


async def test_a_provider_that_does_not_answer_in_time_is_a_timeout() -> None:
    assert classify(await _failure_of(_say_nothing)) is ErrorCode.UPSTREAM_TIMEOUT


async def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(Settings(openai_base_url=f"http://127.0.0.1:{port}/v1", upstream_max_retries=0))
    with pytest.raises(openai.APIConnectionError) as caught:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    await client.close()
    assert classify(caught.value) is ErrorCode.UPSTREAM_UNAVAILABLE
    assert describe(caught.value) == "APITimeoutError cause=ClientConnectorError"  # the log line says what it was
