"""Request and response bodies of the HTTP API (also what /docs shows)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.state import Status

Role = Literal["system", "developer", "user", "assistant", "tool"]

# `metadata` is stored with the generation (Redis, the result store) and returned by every read of it.
MAX_METADATA_BYTES = 16_384  # as compact UTF-8 JSON
MAX_METADATA_DEPTH = 16  # the object itself is depth 1


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Role
    content: str = Field(max_length=1_000_000)


class GenerationCreate(BaseModel):
    """POST /v1/generations. Exactly one of `prompt` and `messages`."""

    # Strict: the OpenAPI document promises integers and booleans, so "5" or 5.0 is a 422, not coerced.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    system: str | None = Field(default=None, max_length=1_000_000)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=1000)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # No upper bound here: MAX_TOKENS_LIMIT is checked after validation (422 max_tokens_too_large, one code).
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    on_complete: str | None = Field(default=None, min_length=1, max_length=200)
    on_content: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict[str, Any] | None = None
    background: bool = False
    error_context: str | None = Field(default=None, max_length=200, description="Label for the worker's logs.")

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        depth = json_depth(value)
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"nested {depth} levels deep; at most {MAX_METADATA_DEPTH}")
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"{size} bytes as JSON; at most {MAX_METADATA_BYTES}")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> GenerationCreate:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` and `messages`")
        if self.system is not None and self.messages is not None:
            raise ValueError("`system` goes with `prompt`; put a system message in `messages` instead")
        return self

    def provider_args(self) -> dict[str, Any]:
        args = {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p}
        return {key: value for key, value in args.items() if value is not None}


class GenerationCreated(BaseModel):
    """202 answer to a background POST."""

    id: str
    status: Status
    url: str
    events_url: str = Field(description="Includes ?token=... so a browser's EventSource can read it.")
    token: str | None = Field(
        default=None, description="Read token for this generation's status and events (`?token=`)."
    )


class GenerationStatus(BaseModel):
    id: str
    status: Status


class GenerationError(BaseModel):
    code: str
    message: str


class HookStatus(BaseModel):
    name: str
    status: Literal["none", "pending", "running", "ok", "failed"]
    attempts: int
    error: str | None


class WebhookDeliveryView(BaseModel):
    """One configured endpoint's delivery of this generation's ending (the endpoint shown by host only)."""

    id: str = Field(description="The `webhook-id` header: the same on every attempt")
    endpoint: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: str | None
    delivered_at: str | None


class GenerationSummary(BaseModel):
    """One item of GET /v1/generations: a generation without its text (GET /v1/generations/{id} has it)."""

    id: str
    status: Status
    model: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    error: GenerationError | None
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None


class GenerationView(GenerationSummary):
    """GET /v1/generations/{id}: the summary with the text, the reasoning, the on_complete hook's state and the
    webhook deliveries of its ending."""

    text: str
    reasoning: str | None
    on_complete: HookStatus | None = None
    webhooks: list[WebhookDeliveryView] = Field(default_factory=list)


class GenerationPage(BaseModel):
    """GET /v1/generations: the caller's generations, newest first."""

    items: list[GenerationSummary]
    next: str | None = Field(description="Cursor of the next page (pass it as `after`); null on the last page.")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
