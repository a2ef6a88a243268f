"""The SQL result store on SQLite and PostgreSQL: migrations, attempt-guarded saves, hook claims, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select, text, update

from shared.ids import new_generation_id
from shared.store.db import make_engine
from shared.store.migrate import MIGRATIONS, upgrade
from shared.store.models import Base, GenerationRecord
from shared.store.repository import FinalResult, ResultStore, aware, utcnow
from tests.support.databases import postgres_database, sqlite_url

MAX_ATTEMPTS = 3
LEASE = timedelta(seconds=30)
CREATED = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResultStore]:
    """A migrated, empty database of each backend, fresh for every test."""
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = stack.enter_context(sqlite_url(tmp_path))
        else:
            url = await stack.enter_async_context(postgres_database())
        engine = make_engine(url)
        stack.push_async_callback(engine.dispose)  # before the database is dropped
        await upgrade(engine)
        yield ResultStore(engine)


def final(**overrides: Any) -> FinalResult:
    """A finished `done` generation with an on_complete hook; override any field."""
    result = FinalResult(
        id=new_generation_id(),
        owner="alice",
        status="done",
        model="demo/echo",
        text="hello",
        reasoning=None,
        finish_reason="stop",
        usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        error_code=None,
        error_message=None,
        metadata={"ticket": "T-1"},
        terminal_event_id="1715938215123-0",
        attempts=1,
        created_at=CREATED,
        started_at=CREATED + timedelta(seconds=1),
        finished_at=utcnow(),
        hook_name="notify",
    )
    return replace(result, **overrides)


async def row_count(store: ResultStore, generation_id: str) -> int:
    statement = select(func.count()).select_from(GenerationRecord).where(GenerationRecord.id == generation_id)
    async with store.engine.connect() as connection:
        return (await connection.execute(statement)).scalar_one()


async def fetch(store: ResultStore, generation_id: str) -> GenerationRecord:
    record = await store.get(generation_id)
    assert record is not None, f"{generation_id} is not in the store"
    return record


async def backdate_hook_claim(store: ResultStore, generation_id: str, by: timedelta) -> None:
    """Makes a `running` claim look as if its worker took it `by` ago (and then died)."""
    statement = (
        update(GenerationRecord).where(GenerationRecord.id == generation_id).values(hook_started_at=utcnow() - by)
    )
    async with store.engine.begin() as connection:
        await connection.execute(statement)


async def alembic_versions(store: ResultStore) -> list[str]:
    async with store.engine.connect() as connection:
        return list((await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars())


def migrations_head() -> str | None:
    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _reflect(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    return {
        "columns": {column["name"]: column["nullable"] for column in inspector.get_columns("generations")},
        "primary_key": inspector.get_pk_constraint("generations")["constrained_columns"],
        "indexes": {index["name"]: index["column_names"] for index in inspector.get_indexes("generations")},
    }


def _model_drift(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


# --- migrations ---------------------------------------------------------------------------------------------


async def test_upgrade_creates_generations_table_with_its_indexes_at_head(store: ResultStore) -> None:
    async with store.engine.connect() as connection:
        schema = await connection.run_sync(_reflect)

    model_columns = {column.name: column.nullable for column in GenerationRecord.__table__.columns}
    assert schema["columns"] == model_columns
    assert schema["primary_key"] == ["id"]
    assert schema["indexes"] == {
        "ix_generations_finished_at": ["finished_at"],
        "ix_generations_hook_status": ["hook_status"],
        "ix_generations_owner_created_at": ["owner", "created_at"],
    }
    assert migrations_head() == "0004"
    assert await alembic_versions(store) == ["0004"]


async def test_migrations_match_the_models(store: ResultStore) -> None:
    async with store.engine.connect() as connection:
        drift = await connection.run_sync(_model_drift)
    assert drift == []


async def test_upgrade_again_is_a_noop_that_keeps_rows(store: ResultStore) -> None:
    result = final()
    await store.save(result)

    await upgrade(store.engine)
    await upgrade(store.engine)

    assert await alembic_versions(store) == [migrations_head()]
    assert (await fetch(store, result.id)).text == result.text
    assert await row_count(store, result.id) == 1


# --- save and get -------------------------------------------------------------------------------------------


async def test_get_returns_every_field_as_saved(store: ResultStore) -> None:
    result = final(
        text="Héllo 👋🏽 世界 — naïve “quotes” 'single' \"double\"\n\ttab; \U0001d518\U0001d52b \\ backslash",
        reasoning="思考中… 🤔",
        finish_reason="length",
        usage={
            "prompt_tokens": 12,
            "completion_tokens": 34,
            "total_tokens": 46,
            "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": None},
        },
        metadata={
            "user": "ユーザー 🧪",
            "nested": {"list": [1, 2.5, "drei", True, None, {"deep": ["x"]}], "empty": {}},
            "flag": False,
        },
        terminal_event_id="1715938255999-3",
        attempts=2,
        created_at=CREATED,
        started_at=CREATED + timedelta(seconds=2, microseconds=1),
        finished_at=CREATED + timedelta(seconds=40, microseconds=999999),
        hook_name="examples.hooks:notify",
    )

    assert await store.save(result) is True
    record = await fetch(store, result.id)

    assert record.id == result.id
    assert record.owner == result.owner
    assert record.status == result.status
    assert record.model == result.model
    assert record.text == result.text
    assert record.reasoning == result.reasoning
    assert record.finish_reason == result.finish_reason
    assert record.usage == result.usage
    assert record.error_code is None
    assert record.error_message is None
    assert record.meta == result.metadata
    assert record.terminal_event_id == result.terminal_event_id
    assert record.attempts == 2
    assert aware(record.created_at) == result.created_at
    assert aware(record.started_at) == result.started_at
    assert aware(record.finished_at) == result.finished_at
    assert record.hook_name == result.hook_name
    assert record.hook_attempts == 0
    assert record.hook_error is None
    assert record.hook_started_at is None
    assert await row_count(store, result.id) == 1


async def test_get_keeps_absent_optional_fields_as_none(store: ResultStore) -> None:
    result = final(
        status="error",
        text="",
        reasoning=None,
        finish_reason=None,
        usage=None,
        error_code="upstream_error",
        error_message="The model provider failed.",
        metadata={},
        started_at=None,
        hook_name=None,
    )

    await store.save(result)
    record = await fetch(store, result.id)

    assert record.text == ""
    assert record.reasoning is None
    assert record.finish_reason is None
    assert record.usage is None
    assert record.error_code == "upstream_error"
    assert record.error_message == "The model provider failed."
    assert record.meta == {}
    assert record.started_at is None
    assert record.hook_name is None


async def test_save_accepts_text_containing_nul_characters(store: ResultStore) -> None:
    """Model output is arbitrary JSON-decoded text (the demo model echoes the prompt): U+0000 can occur.

    PostgreSQL `text` rejects NUL; the record must still be stored (NULs kept or dropped, nothing else changed).
    """
    result = final(text="before\x00after 🙂", reasoning="r\x00")

    await store.save(result)
    record = await fetch(store, result.id)

    assert record.text.replace("\x00", "") == "beforeafter 🙂"
    assert (record.reasoning or "").replace("\x00", "") == "r"
    assert record.terminal_event_id == result.terminal_event_id


async def test_get_of_unknown_id_returns_none(store: ResultStore) -> None:
    await store.save(final())
    assert await store.get(new_generation_id()) is None


async def test_save_with_same_attempt_leaves_the_row_unchanged(store: ResultStore) -> None:
    first = final(text="first", attempts=1, terminal_event_id="100-0")
    assert await store.save(first) is True

    again = replace(first, text="again", status="error", terminal_event_id="200-0")
    assert await store.save(again) is False

    record = await fetch(store, first.id)
    assert (record.text, record.status, record.terminal_event_id, record.attempts) == ("first", "done", "100-0", 1)
    assert await row_count(store, first.id) == 1


async def test_save_with_higher_attempt_replaces_the_row(store: ResultStore) -> None:
    first = final(text="first", attempts=1, terminal_event_id="100-0")
    await store.save(first)

    second = replace(
        first, text="second 🚀", status="error", error_code="timeout", terminal_event_id="200-0", attempts=2
    )
    assert await store.save(second) is True

    record = await fetch(store, first.id)
    assert record.text == "second 🚀"
    assert record.status == "error"
    assert record.error_code == "timeout"
    assert record.terminal_event_id == "200-0"
    assert record.attempts == 2
    assert record.hook_status == "none"  # recomputed for the new status
    assert await row_count(store, first.id) == 1


async def test_save_from_stale_lower_attempt_after_higher_changes_nothing(store: ResultStore) -> None:
    newer = final(text="attempt 2", attempts=2, terminal_event_id="200-0")
    await store.save(newer)

    stale = replace(newer, text="attempt 1", status="error", attempts=1, terminal_event_id="100-0")
    assert await store.save(stale) is False

    record = await fetch(store, newer.id)
    assert (record.text, record.status, record.terminal_event_id, record.attempts) == ("attempt 2", "done", "200-0", 2)
    assert await row_count(store, newer.id) == 1


@pytest.mark.parametrize(
    ("hook_name", "status", "expected"),
    [
        ("notify", "done", "pending"),
        ("notify", "error", "none"),
        ("notify", "cancelled", "none"),
        (None, "done", "none"),
    ],
    ids=["hook-done", "hook-error", "hook-cancelled", "no-hook-done"],
)
async def test_hook_status_is_pending_only_for_done_with_a_hook(
    store: ResultStore, hook_name: str | None, status: str, expected: str
) -> None:
    result = final(hook_name=hook_name, status=status)
    await store.save(result)
    assert (await fetch(store, result.id)).hook_status == expected


# --- hook claims --------------------------------------------------------------------------------------------


async def test_first_claim_returns_attempt_one_and_marks_running(store: ResultStore) -> None:
    result = final()
    await store.save(result)

    before = utcnow()
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) == 1
    after = utcnow()

    record = await fetch(store, result.id)
    assert record.hook_status == "running"
    assert record.hook_attempts == 1
    started = aware(record.hook_started_at)
    assert started is not None
    assert before <= started <= after


async def test_claim_while_running_within_lease_returns_none(store: ResultStore) -> None:
    result = final()
    await store.save(result)
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) == 1

    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) is None
    assert (await fetch(store, result.id)).hook_attempts == 1


async def test_claim_after_hook_succeeded_returns_none(store: ResultStore) -> None:
    result = final()
    await store.save(result)
    await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE)

    await store.finish_hook(result.id, ok=True)

    record = await fetch(store, result.id)
    assert (record.hook_status, record.hook_error) == ("ok", None)
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) is None
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, timedelta(0)) is None


async def test_failed_hook_stores_error_and_next_claim_gets_attempt_two(store: ResultStore) -> None:
    result = final()
    await store.save(result)
    await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE)

    await store.finish_hook(result.id, ok=False, error="ConnectError: réseau indisponible")

    record = await fetch(store, result.id)
    assert record.hook_status == "failed"
    assert record.hook_error == "ConnectError: réseau indisponible"
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) == 2
    assert (await fetch(store, result.id)).hook_status == "running"


async def test_claims_stop_after_max_attempts(store: ResultStore) -> None:
    result = final()
    await store.save(result)

    claimed = []
    for _ in range(MAX_ATTEMPTS):
        claimed.append(await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE))
        await store.finish_hook(result.id, ok=False, error="boom")

    assert claimed == [1, 2, 3]
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) is None
    record = await fetch(store, result.id)
    assert (record.hook_status, record.hook_attempts) == ("failed", MAX_ATTEMPTS)


async def test_running_claim_older_than_lease_can_be_taken_over(store: ResultStore) -> None:
    result = final()
    await store.save(result)
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) == 1

    await backdate_hook_claim(store, result.id, LEASE + timedelta(seconds=5))

    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) == 2
    # The takeover renewed the claim: nobody else can take it now.
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) is None


async def test_stale_running_claim_is_not_taken_over_past_max_attempts(store: ResultStore) -> None:
    result = final()
    await store.save(result)
    assert await store.claim_hook(result.id, 1, LEASE) == 1

    await backdate_hook_claim(store, result.id, LEASE * 10)

    assert await store.claim_hook(result.id, 1, LEASE) is None


@pytest.mark.parametrize(
    "result",
    [final(hook_name=None), final(status="error"), final(status="cancelled")],
    ids=["no-hook", "error", "cancelled"],
)
async def test_claim_without_a_pending_hook_returns_none(store: ResultStore, result: FinalResult) -> None:
    await store.save(result)
    assert await store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) is None
    assert (await fetch(store, result.id)).hook_attempts == 0


async def test_claim_of_unknown_id_returns_none(store: ResultStore) -> None:
    assert await store.claim_hook(new_generation_id(), MAX_ATTEMPTS, LEASE) is None


async def test_concurrent_claims_grant_exactly_one(store: ResultStore) -> None:
    result = final()
    await store.save(result)

    claims = await asyncio.gather(*(store.claim_hook(result.id, MAX_ATTEMPTS, LEASE) for _ in range(20)))

    assert sorted(claims, key=lambda claim: claim is None) == [1] + [None] * 19
    record = await fetch(store, result.id)
    assert (record.hook_status, record.hook_attempts) == ("running", 1)


async def test_concurrent_claims_from_separate_engines_grant_exactly_one(store: ResultStore) -> None:
    """Several worker processes, each with its own engine and pool, race for one hook."""
    result = final()
    await store.save(result)
    stores = [ResultStore(make_engine(store.engine.url.render_as_string(hide_password=False))) for _ in range(4)]
    try:
        claims = await asyncio.gather(
            *(peer.claim_hook(result.id, MAX_ATTEMPTS, LEASE) for peer in stores for _ in range(5))
        )
    finally:
        for peer in stores:
            await peer.engine.dispose()

    assert sorted(claims, key=lambda claim: claim is None) == [1] + [None] * 19
    assert (await fetch(store, result.id)).hook_attempts == 1


# --- sweep and retention ------------------------------------------------------------------------------------


async def test_hooks_due_lists_pending_failed_and_stale_running_only(store: ResultStore) -> None:
    pending, failed, stale, running, succeeded, exhausted, no_hook, errored = (final() for _ in range(8))
    no_hook = replace(no_hook, hook_name=None)
    errored = replace(errored, status="error")
    for result in (pending, failed, stale, running, succeeded, exhausted, no_hook, errored):
        await store.save(result)

    await store.claim_hook(failed.id, MAX_ATTEMPTS, LEASE)
    await store.finish_hook(failed.id, ok=False, error="boom")
    await store.claim_hook(stale.id, MAX_ATTEMPTS, LEASE)
    await backdate_hook_claim(store, stale.id, LEASE * 2)
    await store.claim_hook(running.id, MAX_ATTEMPTS, LEASE)
    await store.claim_hook(succeeded.id, MAX_ATTEMPTS, LEASE)
    await store.finish_hook(succeeded.id, ok=True)
    for _ in range(MAX_ATTEMPTS):
        await store.claim_hook(exhausted.id, MAX_ATTEMPTS, LEASE)
        await store.finish_hook(exhausted.id, ok=False, error="boom")

    due = await store.hooks_due(MAX_ATTEMPTS, LEASE)

    assert sorted(due) == sorted([pending.id, failed.id, stale.id])


async def test_hooks_due_honours_limit(store: ResultStore) -> None:
    results = [final() for _ in range(3)]
    for result in results:
        await store.save(result)

    due = await store.hooks_due(MAX_ATTEMPTS, LEASE, limit=2)

    assert len(due) == 2
    assert set(due) <= {result.id for result in results}


async def test_purge_deletes_only_records_finished_before_the_cutoff(store: ResultStore) -> None:
    now = utcnow()
    ancient = final(finished_at=now - timedelta(days=30))
    old = final(finished_at=now - timedelta(days=2))
    recent = final(finished_at=now - timedelta(hours=23))
    fresh = final(finished_at=now)
    for result in (ancient, old, recent, fresh):
        await store.save(result)

    assert await store.purge(timedelta(days=1)) == 2

    assert await store.get(ancient.id) is None
    assert await store.get(old.id) is None
    assert await store.get(recent.id) is not None
    assert await store.get(fresh.id) is not None
    assert await store.purge(timedelta(days=1)) == 0


async def test_a_retried_attempt_does_not_re_arm_a_hook_that_already_ran(store: ResultStore) -> None:
    first = final(attempts=1, status="done", hook_name="record_completion")
    await store.save(first)
    assert await store.claim_hook(first.id, 3, timedelta(seconds=60)) == 1
    await store.finish_hook(first.id, ok=True)

    await store.save(final(id=first.id, attempts=2, status="done", hook_name="record_completion", text="again"))

    record = await fetch(store, first.id)
    assert (record.text, record.hook_status, record.hook_attempts) == ("again", "ok", 1)
    assert await store.claim_hook(first.id, 3, timedelta(seconds=60)) is None


async def test_a_retried_attempt_that_ends_done_arms_the_hook_of_a_failed_first_record(store: ResultStore) -> None:
    first = final(attempts=1, status="error", hook_name="record_completion")
    await store.save(first)
    assert (await fetch(store, first.id)).hook_status == "none"
    await store.save(final(id=first.id, attempts=2, status="done", hook_name="record_completion"))
    assert (await fetch(store, first.id)).hook_status == "pending"
