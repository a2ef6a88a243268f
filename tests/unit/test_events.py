"""shared.events encoders, and the shared.streams helpers that read the encoded events."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest

from shared import events
from shared.errors import RETRYABLE, SAFE_MESSAGES, ErrorCode
from shared.streams import fold, is_terminal

ENCODED: dict[str, Callable[[], str]] = {
    "content": lambda: events.content("hello"),
    "reasoning": lambda: events.reasoning("thinking"),
    "reset": lambda: events.reset(2, "retry"),
    "done": lambda: events.done("hello", "stop", {"total_tokens": 3}),
    "error": lambda: events.error(ErrorCode.UPSTREAM_TIMEOUT),
}


@pytest.mark.parametrize("kind", sorted(ENCODED))
def test_encoded_event_is_compact_single_line_json_with_type_first(kind: str) -> None:
    raw = ENCODED[kind]()
    assert raw.startswith(f'{{"type":"{kind}"')
    assert "\n" not in raw
    assert ": " not in raw and ", " not in raw
    decoded = json.loads(raw)
    assert next(iter(decoded)) == "type"
    assert decoded["type"] == kind


def test_content_keeps_non_ascii_characters_unescaped() -> None:
    raw = events.content("héllo 🌍 日本")
    assert "héllo 🌍 日本" in raw
    assert "\\u" not in raw
    assert json.loads(raw)["data"] == "héllo 🌍 日本"


def test_newline_in_content_stays_escaped_on_one_line() -> None:
    raw = events.content("line one\nline two\r\n")
    assert "\n" not in raw and "\r" not in raw
    assert "\\n" in raw
    assert json.loads(raw)["data"] == "line one\nline two\r\n"


def test_done_length_counts_code_points_and_hashes_utf8_bytes() -> None:
    text = "héllo 🌍"
    data = json.loads(events.done(text, "stop", {"total_tokens": 5}))["data"]
    assert data["length"] == 7
    assert data["sha256"] == hashlib.sha256("héllo 🌍".encode()).hexdigest()
    assert data["finish_reason"] == "stop"
    assert data["usage"] == {"total_tokens": 5}


def test_done_of_a_digest_is_the_done_of_its_text() -> None:
    text = "héllo 👋"
    usage = {"total_tokens": 3}
    assert events.done_of(events.digest(text), "stop", usage) == events.done(text, "stop", usage)


def test_done_carries_null_finish_reason_and_usage() -> None:
    data = json.loads(events.done("", None, None))["data"]
    assert data == {
        "finish_reason": None,
        "usage": None,
        "length": 0,
        "sha256": hashlib.sha256(b"").hexdigest(),
    }


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_carries_safe_message_code_and_retryable_flag(code: ErrorCode) -> None:
    decoded = json.loads(events.error(code))
    assert decoded == {
        "type": "error",
        "error": SAFE_MESSAGES[code],
        "code": code.value,
        "data": {"retryable": code in RETRYABLE},
    }


def test_error_retryable_flag_differs_between_codes() -> None:
    assert json.loads(events.error(ErrorCode.UPSTREAM_RATE_LIMITED))["data"]["retryable"] is True
    assert json.loads(events.error(ErrorCode.UPSTREAM_AUTH))["data"]["retryable"] is False
    assert json.loads(events.error(ErrorCode.CANCELLED))["data"]["retryable"] is False


def test_every_event_type_has_an_encoder() -> None:
    assert set(ENCODED) == set(events.EVENT_TYPES)
    assert set(events.EVENT_TYPES) > events.TERMINAL_TYPES


@pytest.mark.parametrize(("kind", "terminal"), [(k, k in ("done", "error")) for k in sorted(ENCODED)])
def test_is_terminal_agrees_with_event_type(kind: str, terminal: bool) -> None:
    raw = ENCODED[kind]()
    assert is_terminal(raw) is terminal
    assert (json.loads(raw)["type"] in events.TERMINAL_TYPES) is terminal


def test_is_terminal_is_not_fooled_by_terminal_words_in_content() -> None:
    assert is_terminal(events.content('{"type":"done"')) is False
    assert is_terminal(events.reasoning("error")) is False


def test_fold_discards_everything_before_the_last_reset() -> None:
    entries = [
        ("1-0", events.content("lost ")),
        ("2-0", events.reasoning("lost thought")),
        ("3-0", events.reset(2, "retry")),
        ("4-0", events.content("also lost")),
        ("5-0", events.reset(3, "retry")),
        ("6-0", events.reasoning("kept ")),
        ("7-0", events.content("Hello, ")),
        ("8-0", events.reasoning("thought")),
        ("9-0", events.content("world")),
        ("10-0", events.done("Hello, world", "stop", None)),
    ]
    folded = fold(entries)
    assert folded.text == "Hello, world"
    assert folded.reasoning == "kept thought"
    assert folded.terminal is not None
    assert folded.terminal["type"] == "done"
    assert folded.terminal == json.loads(entries[-1][1])


def test_fold_returns_error_terminal_and_no_terminal_when_open() -> None:
    open_stream = fold([("1-0", events.content("partial"))])
    assert open_stream.text == "partial"
    assert open_stream.terminal is None

    failed = fold([("1-0", events.content("partial")), ("2-0", events.error(ErrorCode.INTERNAL))])
    assert failed.text == "partial"
    assert failed.terminal is not None
    assert failed.terminal["code"] == "internal"
