"""Generation ids, Redis stream id parsing and ordering helpers, and per-generation key names."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from shared.ids import (
    format_stream_id,
    is_generation_id,
    new_generation_id,
    parse_stream_id,
    previous_stream_id,
)
from shared.keys import GENERATION_BUCKETS, generation_keys, worker_health_key

U64 = 2**64 - 1


def test_new_generation_id_is_gen_prefix_and_32_lowercase_hex() -> None:
    generation_id = new_generation_id()
    assert re.fullmatch(r"gen_[0-9a-f]{32}", generation_id)
    assert len(bytes.fromhex(generation_id.removeprefix("gen_"))) * 8 == 128
    assert is_generation_id(generation_id)


def test_new_generation_ids_are_unique() -> None:
    ids = {new_generation_id() for _ in range(1000)}
    assert len(ids) == 1000


@pytest.mark.parametrize(
    "value",
    [
        "",
        "gen_",
        "gen_" + "A" * 32,
        "GEN_" + "a" * 32,
        "gen_" + "a" * 31,
        "gen_" + "a" * 33,
        "gen_" + "g" * 32,
        "a" * 32,
        "../../etc/passwd",
        "gen_../" + "a" * 29,
        "gen_" + "a" * 31 + "/",
        " gen_" + "a" * 32,
        "gen_" + "a" * 32 + " ",
        "gen-" + "a" * 32,
    ],
)
def test_is_generation_id_rejects_malformed_values(value: str) -> None:
    assert not is_generation_id(value)


def test_is_generation_id_rejects_trailing_newline() -> None:
    # `re.match(...$)` lets a trailing "\n" through; a validator must use fullmatch / \Z.
    assert not is_generation_id(new_generation_id() + "\n")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0-0", (0, 0)),
        ("1732512345678-12", (1732512345678, 12)),
        (f"{U64}-{U64}", (U64, U64)),
    ],
)
def test_parse_stream_id_accepts_redis_ids(value: str, expected: tuple[int, int]) -> None:
    assert parse_stream_id(value) == expected
    assert format_stream_id(expected) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "1-",
        "-1",
        "1-2-3",
        " 1-2",
        "1-2 ",
        "1",
        "-",
        "1-a",
        "+1-2",
        f"{U64 + 1}-0",
        f"0-{U64 + 1}",
        "99999999999999999999-0",
        "1" * 21 + "-0",
    ],
)
def test_parse_stream_id_rejects_malformed_or_out_of_range(value: str) -> None:
    assert parse_stream_id(value) is None


def test_parse_stream_id_rejects_trailing_newline() -> None:
    # Redis rejects "1-2\n"; the docstring promises None for anything Redis would reject.
    assert parse_stream_id("1-2\n") is None


def test_parse_stream_id_rejects_non_ascii_digits() -> None:
    # `\d` matches any Unicode digit; Redis only takes ASCII digits.
    assert parse_stream_id("\u0661-\u0662") is None


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ((5, 0), (4, U64)),
        ((5, 3), (5, 2)),
        ((0, 1), (0, 0)),
        ((0, 0), (0, 0)),
        ((1, 0), (0, U64)),
    ],
)
def test_previous_stream_id_edge_cases(parts: tuple[int, int], expected: tuple[int, int]) -> None:
    assert previous_stream_id(parts) == expected


def test_previous_stream_id_is_strictly_before_except_at_zero() -> None:
    for parts in [(5, 0), (5, 3), (1732512345678, 0), (0, 1)]:
        assert previous_stream_id(parts) < parts


def _hash_tag(key: str) -> str:
    # Redis Cluster hashes the text between the first "{" and the next "}".
    return key[key.index("{") + 1 : key.index("}")]


def test_generation_keys_share_one_hash_tag_and_the_prefix() -> None:
    generation_id = new_generation_id()
    keys = generation_keys("myprefix", generation_id)
    for key in (keys.events, keys.state):
        assert key.startswith("myprefix:")
        assert generation_id in key
    assert _hash_tag(keys.events) == _hash_tag(keys.state) == _hash_tag(keys.bell)
    assert len({keys.events, keys.state, keys.bell}) == 3
    assert keys.bell.startswith("myprefix:") and generation_id not in keys.bell  # one doorbell per bucket


def test_generations_spread_over_a_bounded_set_of_slots() -> None:
    slots = {key_slot(generation_keys("p", new_generation_id()).events.encode()) for _ in range(2000)}
    assert len(slots) == GENERATION_BUCKETS


def test_generation_keys_differ_between_generations_and_prefixes() -> None:
    first, second = new_generation_id(), new_generation_id()
    assert generation_keys("p", first).events != generation_keys("p", second).events
    assert generation_keys("p", first).state != generation_keys("q", first).state


def test_worker_health_key_uses_prefix() -> None:
    assert worker_health_key("abc").startswith("abc:")
    assert worker_health_key("abc") != worker_health_key("xyz")
