"""Terminal error codes shared by the worker (which raises them) and the API (which documents them)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    UPSTREAM_AUTH = "upstream_auth"
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_BAD_REQUEST = "upstream_bad_request"
    UPSTREAM_BAD_RESPONSE = "upstream_bad_response"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    INTERNAL = "internal"


# A message safe to show a user for each code: provider messages are never forwarded (they can echo keys).
SAFE_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UPSTREAM_AUTH: "The model provider rejected the service's credentials.",
    ErrorCode.UPSTREAM_RATE_LIMITED: "The model provider is rate limiting requests; try again shortly.",
    ErrorCode.UPSTREAM_UNAVAILABLE: "The model provider is unavailable or the connection to it failed.",
    ErrorCode.UPSTREAM_BAD_REQUEST: "The model provider refused the request (unknown model or bad parameters).",
    ErrorCode.UPSTREAM_BAD_RESPONSE: "The model provider sent an incomplete or malformed stream.",
    ErrorCode.UPSTREAM_TIMEOUT: "The model provider stopped sending data.",
    ErrorCode.CANCELLED: "The generation was cancelled.",
    ErrorCode.WORKER_LOST: "The worker running this generation was lost and no attempts are left.",
    ErrorCode.INTERNAL: "An internal error ended the generation.",
}

# Worth retrying later by the client (a new generation), as opposed to a request that will fail again.
RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.UPSTREAM_RATE_LIMITED,
        ErrorCode.UPSTREAM_UNAVAILABLE,
        ErrorCode.UPSTREAM_TIMEOUT,
        ErrorCode.UPSTREAM_BAD_RESPONSE,
        ErrorCode.WORKER_LOST,
        ErrorCode.INTERNAL,
    }
)


def error_code_of(value: str | None) -> ErrorCode:
    """A stored code back to the enum; anything unknown reads as `internal`."""
    try:
        return ErrorCode(value or "internal")
    except ValueError:
        return ErrorCode.INTERNAL
