"""Generation ids and Redis stream ids: making them, and validating what clients send back."""

from __future__ import annotations

import re
import secrets

GENERATION_ID_RE = re.compile(r"gen_[0-9a-f]{32}")
STREAM_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1


def new_generation_id() -> str:
    """128 random bits: ids double as unguessable handles, so they must not be enumerable."""
    return "gen_" + secrets.token_hex(16)


def is_generation_id(value: str) -> bool:
    return GENERATION_ID_RE.fullmatch(value) is not None


def parse_stream_id(value: str) -> tuple[int, int] | None:
    """`1732512345678-0` -> (1732512345678, 0); None for anything Redis would reject."""
    match = STREAM_ID_RE.fullmatch(value)
    if match is None:
        return None
    ms, seq = int(match.group(1)), int(match.group(2))
    if ms > _U64 or seq > _U64:
        return None
    return ms, seq


def format_stream_id(parts: tuple[int, int]) -> str:
    return f"{parts[0]}-{parts[1]}"


def previous_stream_id(parts: tuple[int, int]) -> tuple[int, int]:
    """The largest id strictly before `parts` (used to label a synthetic event just before a retained one)."""
    ms, seq = parts
    if seq > 0:
        return ms, seq - 1
    return (ms - 1, _U64) if ms > 0 else (0, 0)


def next_stream_id(last: str | None, now_ms: int) -> str:
    """An id after `last` (the newest entry this writer made), near `now_ms`: chosen by the worker so the
    durable record can carry the terminal event's id before the event is written."""
    candidate = (now_ms, 0)
    parsed = parse_stream_id(last) if last else None
    if parsed is not None and candidate <= parsed:
        candidate = (parsed[0], parsed[1] + 1)
    return format_stream_id(candidate)
