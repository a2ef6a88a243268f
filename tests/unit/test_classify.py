"""worker.upstream.classify and describe on real SDK, httpx/httpx2 and parsing exceptions."""

from __future__ import annotations

import json

import httpx
import httpx2
import openai
import pytest

from shared.errors import ErrorCode
from worker.upstream import classify, describe

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
