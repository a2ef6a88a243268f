"""OpenAI-shaped errors for a generation that failed: an HTTP status before a stream started, an error message
inside it after; the text is always our safe message for the code, never the provider's."""

from __future__ import annotations

from typing import Any

from api.errors import ApiError, openai_error_body
from shared.errors import SAFE_MESSAGES, error_code_of

# Not a generation's ending but a stream's: the generation goes on, its text no longer continues what was sent.
GENERATION_RESTARTED = "generation_restarted"
RESTARTED_MESSAGE = (
    "The generation was restarted after a worker failure and its new text departs from what this stream sent; "
    "retry, or fetch the final result by id."
)

# A finished generation's error code -> the HTTP status an OpenAI SDK maps to the matching exception.
_STATUS = {
    "upstream_bad_request": 400,
    "upstream_rate_limited": 429,
    "upstream_unavailable": 503,
    "upstream_timeout": 503,
    "cancelled": 409,
    GENERATION_RESTARTED: 409,
}


def terminal_error(event: dict[str, Any] | None) -> tuple[int, str, str]:
    """(status, code, message) of a failed generation's terminal event, or of a restart (event None)."""
    if event is None:
        return _STATUS[GENERATION_RESTARTED], GENERATION_RESTARTED, RESTARTED_MESSAGE
    code = error_code_of(str(event.get("code")))
    return _STATUS.get(code.value, 500), code.value, SAFE_MESSAGES[code]


def failed_before_stream(event: dict[str, Any] | None, generation_id: str) -> ApiError:
    """The generation ended in error before its first token: an HTTP error (the SDK raises the status's class).

    `x-should-retry: false`: the worker already retried the provider before the first token, and a retry of the
    POST is a new generation; whether to start one is the caller's decision, not the SDK's automatic one.
    """
    status, code, message = terminal_error(event)
    headers = {"X-Generation-Id": generation_id, "x-should-retry": "false"}
    return ApiError(status, code, message, headers=headers)


def in_stream_error(event: dict[str, Any] | None) -> dict[str, Any]:
    """The generation failed after its stream started: an `{"error": ...}` message, which the SDK raises."""
    status, code, message = terminal_error(event)
    return openai_error_body(status, code, message)
