"""The SSE event vocabulary (content, reasoning, reset, done, error): typed models and the compact JSON encoding."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from shared.errors import RETRYABLE, SAFE_MESSAGES, ErrorCode


class ContentEvent(BaseModel):
    type: Literal["content"] = "content"
    data: str


class ReasoningEvent(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    data: str


class ResetData(BaseModel):
    attempt: int
    reason: str


class ResetEvent(BaseModel):
    type: Literal["reset"] = "reset"
    data: ResetData


class DoneData(BaseModel):
    finish_reason: str | None
    usage: dict[str, Any] | None
    length: int
    sha256: str


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    data: DoneData


class ErrorData(BaseModel):
    retryable: bool


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    error: str
    code: str
    data: ErrorData


Event = Annotated[ContentEvent | ReasoningEvent | ResetEvent | DoneEvent | ErrorEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
TERMINAL_TYPES = frozenset({"done", "error"})


def encode(payload: dict[str, Any]) -> str:
    """Compact, single-line JSON: one `data:` line per SSE event, UTF-8 kept as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def content(text: str) -> str:
    return encode({"type": "content", "data": text})


def reasoning(text: str) -> str:
    return encode({"type": "reasoning", "data": text})


def reset(attempt: int, reason: str) -> str:
    return encode({"type": "reset", "data": {"attempt": attempt, "reason": reason}})


def digest(text: str) -> tuple[int, str]:
    """The final text's length (code points) and sha256 (of its UTF-8), as `done` carries them."""
    return len(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


def done(text: str, finish_reason: str | None, usage: dict[str, Any] | None) -> str:
    length, sha256 = digest(text)
    data = {"finish_reason": finish_reason, "usage": usage, "length": length, "sha256": sha256}
    return encode({"type": "done", "data": data})


def error(code: ErrorCode) -> str:
    return encode(
        {
            "type": "error",
            "error": SAFE_MESSAGES[code],
            "code": code.value,
            "data": {"retryable": code in RETRYABLE},
        }
    )


def parse(raw: str | bytes) -> Event:
    return EVENT_ADAPTER.validate_json(raw)
