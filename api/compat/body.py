"""The body of an OpenAI-format request (chat completions, responses): validated, or OpenAI's 400 naming the
parameter at fault."""

from __future__ import annotations

from typing import Protocol, TypeVar

from fastapi import Request
from pydantic import ValidationError

from api.body import read_json
from api.errors import ApiError, describe_validation


class OpenAIRequest(Protocol):
    @classmethod
    def model_validate(cls, obj: object) -> OpenAIRequest: ...

    def refuse_unsupported(self) -> None: ...


Body = TypeVar("Body", bound=OpenAIRequest)


async def openai_body(request: Request, model: type[Body]) -> Body:
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise ApiError(400, "validation_error", "The request body must be a JSON object.")
    try:
        body = model.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors()
        param = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else None
        raise ApiError(400, "validation_error", describe_validation(errors), param=param or None) from None
    assert isinstance(body, model)
    body.refuse_unsupported()
    return body
