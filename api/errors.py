"""Every error the API answers, in one JSON shape: {"error": {"code", "message"}} (plus OpenAI's `type` and `param`
on the OpenAI-compatible routes, whose SDKs read them)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sse_relay.api")


class ApiError(Exception):
    """Raised anywhere in a request; rendered by the handler below."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.param = param  # the request field at fault, for OpenAI-shaped errors


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# Routes that speak OpenAI's protocol (api/routes/chat.py, api/routes/responses.py): their clients are the
# OpenAI SDKs, which read `type` and `param` next to `code` and `message`.
OPENAI_PATHS = ("/v1/chat/", "/v1/responses")


def openai_type(status: int) -> str:
    """OpenAI's error `type` for a status."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def openai_error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": openai_type(status), "param": param, "code": code}}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    param: str | None = None,
) -> JSONResponse:
    if request is not None and request.url.path.startswith(OPENAI_PATHS):
        return JSONResponse(openai_error_body(status, code, message, param), status_code=status, headers=headers)
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


# Status codes of routing errors, named for clients that switch on `code`.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}


def describe_validation(errors: list[Any]) -> str:
    """'prompt: Field required; temperature: Input should be less than or equal to 2'."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        # pydantic prefixes the message of a ValueError raised by a validator with "Value error, ".
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts) or "The request is invalid."


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, request, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = describe_validation(list(exc.errors()))
        # OpenAI answers a bad parameter with 400; its SDKs raise BadRequestError for it.
        status = 400 if request.url.path.startswith(OPENAI_PATHS) else 422
        return error_response(status, "validation_error", message, request=request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return error_response(exc.status_code, code, message, dict(exc.headers or {}), request)

    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        message = "The service's Redis is unreachable; try again shortly."
        return error_response(503, "redis_unavailable", message, request=request)

    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error: %s", type(exc).__name__)
        return error_response(500, "internal", "An internal error occurred.", request=request)
