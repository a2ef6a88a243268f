"""The SSE event vocabulary (content, reasoning, reset, done, error) and its compact JSON encoding."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shared.errors import RETRYABLE, SAFE_MESSAGES, ErrorCode

# Every event type, in the order a stream uses them; the last two end a generation.
EVENT_TYPES = ("content", "reasoning", "reset", "done", "error")
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
    return done_of(digest(text), finish_reason, usage)


def done_of(text_digest: tuple[int, str], finish_reason: str | None, usage: dict[str, Any] | None) -> str:
    """`done` for a text whose digest the caller already has (the worker also stores it in the state)."""
    length, sha256 = text_digest
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
