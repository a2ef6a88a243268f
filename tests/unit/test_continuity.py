"""The no-reset rule of the OpenAI formats: a client never gets text that repeats or contradicts what it holds."""

from __future__ import annotations

import json
from typing import Any

from api.compat.continuity import Continuity, End, Output, Piece
from shared import events
from shared.errors import ErrorCode


def _feed(*raw: str) -> list[Output]:
    continuity = Continuity()
    out: list[Output] = []
    for event in raw:
        out += continuity.feed(json.loads(event))
    return out


def _sent(out: list[Output], channel: str = "content") -> str:
    return "".join(o.text for o in out if isinstance(o, Piece) and o.channel == channel)


def _end(out: list[Output]) -> dict[str, Any] | None:
    assert isinstance(out[-1], End)
    return out[-1].event


DONE = events.done("abcdef", "stop", None)


def test_without_a_reset_every_piece_passes_through() -> None:
    out = _feed(events.reasoning("hm"), events.content("abc"), events.content("def"), DONE)
    assert _sent(out) == "abcdef" and _sent(out, "reasoning") == "hm"
    assert _end(out) == json.loads(DONE)


def test_a_retry_that_repeats_and_extends_the_text_sends_only_the_new_suffix() -> None:
    out = _feed(
        events.content("abc"),
        events.reset(2, "retry"),
        events.content("a"),
        events.content("bcd"),  # catches up and passes what was sent
        events.content("ef"),
        DONE,
    )
    assert [o.text for o in out if isinstance(o, Piece)] == ["abc", "d", "ef"]
    assert _end(out) == json.loads(DONE)


def test_a_retry_that_departs_from_what_was_sent_ends_the_stream_as_restarted() -> None:
    out = _feed(events.content("abc"), events.reset(2, "retry"), events.content("abX"), events.content("more"))
    assert _sent(out) == "abc"
    assert isinstance(out[-1], End) and out[-1].restarted


def test_a_retry_that_ends_short_of_what_was_sent_is_restarted_too() -> None:
    shorter = events.done("abc", "stop", None)
    out = _feed(events.content("abcdef"), events.reset(2, "retry"), events.content("abc"), shorter)
    assert _sent(out) == "abcdef"
    assert _end(out) is None


def test_a_retry_with_the_same_text_ends_normally() -> None:
    out = _feed(events.content("abcdef"), events.reset(2, "retry"), events.content("abcdef"), DONE)
    assert _sent(out) == "abcdef" and _end(out) == json.loads(DONE)


def test_reasoning_follows_the_same_rule_on_its_own_channel() -> None:
    out = _feed(events.reasoning("think"), events.reset(2, "retry"), events.reasoning("thonk"))
    assert _end(out) is None


def test_an_error_terminal_passes_through_and_nothing_follows_it() -> None:
    continuity = Continuity()
    error = json.loads(events.error(ErrorCode.UPSTREAM_UNAVAILABLE))
    assert continuity.feed(error) == [End(error)]
    assert continuity.feed(json.loads(events.content("late"))) == []
