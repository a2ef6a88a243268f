"""Reading a POST body as JSON: JSON, text/plain, no Content-Type (the seed's browser example), or a form content
type whose body is JSON (`curl -d '{...}'`) are accepted."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from api.errors import ApiError, describe_validation
from api.schemas import GenerationCreate

# Anything is tried as JSON, since browsers and `fetch` send a string body as text/plain, many clients send no
# Content-Type at all, and `curl -d` labels its JSON as a form. Only a body that is a form is refused: multipart
# always, url-encoded when it does not parse as JSON.
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_NOT_A_FORM = "Send the body as JSON (application/json), not a form."


async def read_json(request: Request) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == _MULTIPART:
        raise ApiError(415, "unsupported_media_type", _NOT_A_FORM)
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        if content_type == _FORM:
            raise ApiError(415, "unsupported_media_type", _NOT_A_FORM) from None
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON ({type(exc).__name__}).") from None
    check_json_values(payload)
    return payload


def check_json_values(payload: Any) -> None:
    """422 for values JSON's grammar lets through but nothing downstream can store or send: text that is not
    valid Unicode (an escaped lone surrogate such as "\\udfff") and numbers that are not finite (NaN, Infinity,
    1e400), wherever they are in the body, keys included."""
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_text(path, value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise _invalid(path, "numbers must be finite (NaN and Infinity are not JSON numbers)")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(path, key)
                stack.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            stack += [(f"{path}[{index}]", item) for index, item in enumerate(value)]


def _check_text(path: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(path, "text must be valid Unicode (it holds an unpaired surrogate escape)") from None


def _invalid(path: str, problem: str) -> ApiError:
    return ApiError(422, "validation_error", f"{path}: {problem}" if path else problem)


async def generation_create(request: Request) -> GenerationCreate:
    """FastAPI dependency: the validated body of POST /v1/generations."""
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(422, "validation_error", "The request body must be a JSON object.")
    try:
        return GenerationCreate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", describe_validation(exc.errors())) from None
