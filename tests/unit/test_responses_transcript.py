"""Responses events are numbered by the text they carry, so any cut of the same text numbers them alike."""

from __future__ import annotations

import json
from typing import Any

from api.compat.continuity import End, Output, Piece
from api.compat.responses import Facts, Transcript
from shared import events
from shared.errors import ErrorCode


def _events(outputs: list[Output], starting_after: int | None = None) -> list[dict[str, Any]]:
    transcript = Transcript(Facts(id="gen_" + "a" * 32, created_at=1, model="m", status="queued"))
    numbered = transcript.start()
    for output in outputs:
        numbered += transcript.feed(output)
    return [event for item in numbered if (event := item.after(starting_after)) is not None]


def _done(text: str) -> End:
    return End(json.loads(events.done(text, "stop", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})))


def _pieces(*texts: str, channel: str = "content") -> list[Output]:
    return [Piece(channel, text) for text in texts]  # type: ignore[arg-type]


def _structural(sent: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["type"], e["sequence_number"]) for e in sent if "delta" not in e]


def test_the_same_text_cut_differently_gets_the_same_structural_numbers() -> None:
    one = _events([*_pieces("abcdef"), _done("abcdef")])
    three = _events([*_pieces("ab", "c", "def"), _done("abcdef")])
    assert _structural(one) == _structural(three)
    numbers = [e["sequence_number"] for e in three]
    assert numbers == sorted(set(numbers))
    assert (
        one[-1]["type"] == "response.completed" and one[-1]["response"]["output"][0]["content"][0]["text"] == "abcdef"
    )


def test_a_resume_inside_a_delta_gets_the_rest_of_it() -> None:
    full = _events([*_pieces("abcdef"), _done("abcdef")])
    delta = next(e for e in full if e["type"] == "response.output_text.delta")
    resumed = _events([*_pieces("abcdef"), _done("abcdef")], starting_after=delta["sequence_number"] - 2)
    assert (resumed[0]["delta"], resumed[0]["sequence_number"]) == ("ef", delta["sequence_number"])


def test_reasoning_comes_first_as_its_own_item_and_late_reasoning_is_left_out() -> None:
    outputs = [*_pieces("think", channel="reasoning"), *_pieces("ans"), *_pieces("late", channel="reasoning")]
    sent = _events([*outputs, _done("ans")])
    kinds = [e["type"] for e in sent]
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.output_text.delta")
    assert kinds.count("response.reasoning_text.delta") == 1
    assert [item["type"] for item in sent[-1]["response"]["output"]] == ["reasoning", "message"]


def test_a_restart_ends_with_an_error_event_and_a_failure_with_response_failed() -> None:
    assert _events([*_pieces("ab"), End(None)])[-1]["code"] == "generation_restarted"
    failed = _events([End(json.loads(events.error(ErrorCode.CANCELLED)))])[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "cancelled"
