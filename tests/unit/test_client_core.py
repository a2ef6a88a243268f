"""The client's resume state machine (sse_relay._core) on its own: duplicates, reset, integrity, giving up."""

from __future__ import annotations

import hashlib
import json

import pytest

from sse_relay._core import Backoff, Follow, RelayError


def done(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return json.dumps(
        {"type": "done", "data": {"finish_reason": "stop", "usage": None, "length": len(text), "sha256": digest}}
    )


def content(text: str) -> str:
    return json.dumps({"type": "content", "data": text})


def test_an_event_at_or_before_the_last_one_is_never_delivered_again() -> None:
    follow = Follow(Backoff(), create={"prompt": "x"})
    assert follow.request().method == "POST"
    assert follow.opened(200, "gen_1")
    assert follow.accept("5-0", content("a")) is not None
    assert follow.accept("5-0", content("a")) is None  # replayed after a reconnect
    assert follow.accept("4-9", content("z")) is None
    assert follow.accept("5-1", "") is None  # a ping
    call = follow.request()
    assert (call.method, call.path, call.headers["Last-Event-ID"]) == ("GET", "/v1/generations/gen_1/events", "5-0")
    follow.accept("6-0", content("b"))
    follow.accept("7-0", done("ab"))
    result = follow.result()
    assert result is not None and result.text == "ab"


def test_reset_discards_the_text_so_far() -> None:
    follow = Follow(Backoff(), generation_id="gen_1")
    follow.accept("1-0", content("first try"))
    follow.accept("2-0", json.dumps({"type": "reset", "data": {"attempt": 2, "reason": "retry"}}))
    follow.accept("3-0", content("second"))
    follow.accept("4-0", done("second"))
    result = follow.result()
    assert result is not None and result.text == "second"


def test_a_text_that_does_not_match_done_raises() -> None:
    follow = Follow(Backoff(), generation_id="gen_1")
    follow.accept("1-0", content("abc"))
    with pytest.raises(RelayError) as raised:
        follow.accept("2-0", done("abd"))
    assert raised.value.code == "integrity_mismatch"


def test_an_error_terminal_raises_its_code() -> None:
    follow = Follow(Backoff(), generation_id="gen_1")
    error = {"type": "error", "code": "upstream_auth", "error": "The provider refused.", "data": {"retryable": False}}
    follow.accept("1-0", json.dumps(error))
    with pytest.raises(RelayError) as raised:
        follow.result()
    assert (raised.value.code, raised.value.retryable) == ("upstream_auth", False)


def test_reconnects_are_bounded_and_an_event_resets_the_count() -> None:
    follow = Follow(Backoff(tries=2, first_s=0.01, max_s=0.01), generation_id="gen_1")
    follow.dropped(OSError("refused"))
    follow.dropped(OSError("refused"))
    follow.accept("1-0", content("x"))  # progress: the count starts again
    follow.dropped(OSError("refused"))
    follow.dropped(OSError("refused"))
    with pytest.raises(RelayError) as raised:
        follow.dropped(OSError("refused"))
    assert raised.value.code == "connection_lost" and "1-0" in raised.value.message


def test_a_non_retryable_refusal_raises_and_a_503_waits() -> None:
    follow = Follow(Backoff(), generation_id="gen_1")
    body = json.dumps({"error": {"code": "redis_unavailable", "message": "down"}}).encode()
    assert follow.refused(503, body) > 0
    with pytest.raises(RelayError) as raised:
        follow.refused(404, json.dumps({"error": {"code": "not_found", "message": "No such id."}}).encode())
    assert (raised.value.code, raised.value.status) == ("not_found", 404)
