"""Reading a POST body as JSON: JSON, text/plain or no Content-Type (the seed's browser example) are accepted."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from api.errors import ApiError, describe_validation
from api.schemas import GenerationCreate

# Only form encodings are refused outright: anything else is tried as JSON, since browsers and `fetch`
# send a string body as text/plain and many clients send no Content-Type at all.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_json(request: Request) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON (application/json), not a form.")
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON ({type(exc).__name__}).") from None


async def generation_create(request: Request) -> GenerationCreate:
    """FastAPI dependency: the validated body of POST /v1/generations."""
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(422, "validation_error", "The request body must be a JSON object.")
    try:
        return GenerationCreate.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "validation_error", describe_validation(exc.errors())) from None
