"""Reads and writes of final records: one upsert per finishing attempt, hook bookkeeping, retention."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Executable, Table, and_, case, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import defer

from shared.errors import SAFE_MESSAGES, ErrorCode
from shared.store import deliveries
from shared.store.db import sessions
from shared.store.group_commit import GroupCommit
from shared.store.models import GenerationRecord, WebhookDelivery
from shared.webhooks import Endpoint

if TYPE_CHECKING:
    from shared.state import GenerationState


@dataclass(frozen=True, slots=True)
class FinalResult:
    """What the worker knows when a generation ends, written before its terminal event is published."""

    id: str
    owner: str
    status: str
    model: str
    text: str
    reasoning: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    metadata: dict[str, Any]
    terminal_event_id: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime
    hook_name: str | None
    read_token_sha: str | None = None

    @classmethod
    def ending(
        cls,
        state: GenerationState,
        status: str,
        terminal_id: str,
        attempts: int,
        *,
        finished_at: datetime | None = None,
        text: str = "",
        reasoning: str | None = None,
        finish_reason: str | None = None,
        usage: dict[str, Any] | None = None,
        code: ErrorCode | None = None,
    ) -> FinalResult:
        """The record of a generation ending as `status`, everything else taken from its Redis state."""
        finished = finished_at or _moment(state.finished_at) or utcnow()
        return cls(
            id=state.id,
            owner=state.owner,
            status=status,
            model=state.model,
            text=text,
            reasoning=reasoning or None,
            finish_reason=finish_reason,
            usage=usage,
            error_code=code.value if code else None,
            error_message=SAFE_MESSAGES[code] if code else None,
            metadata=state.metadata,
            terminal_event_id=terminal_id,
            attempts=max(attempts, 1),
            created_at=_moment(state.created_at) or finished,
            started_at=_moment(state.started_at),
            finished_at=finished,
            hook_name=state.request.on_complete,  # owed only when done (row()); shown either way
            read_token_sha=state.read_token_sha,
        )

    def row(self) -> dict[str, Any]:
        # Shallow: asdict() deep-copies every datetime and dict, 150 µs per save for copies nobody mutates.
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        values["meta"] = values.pop("metadata")
        # PostgreSQL text cannot hold NUL (the worker already drops it from provider output).
        for name in ("text", "reasoning", "error_message"):
            if isinstance(values[name], str):
                values[name] = values[name].replace("\x00", "")
        # SQLite keeps the wall-clock time and drops the offset: store UTC everywhere.
        for name in ("created_at", "started_at", "finished_at"):
            if isinstance(values[name], datetime):
                values[name] = values[name].astimezone(UTC)
        values["hook_status"] = "pending" if self.hook_name and self.status == "done" else "none"
        values["hook_attempts"] = 0
        return values


@functools.cache
def _column_names() -> dict[str, str]:
    """Attribute name -> column name of GenerationRecord, fixed once mapped: reading the mapper's column
    attributes on every save was 5 % of a busy worker's CPU (py-spy, BENCHMARKS.md)."""
    return {attr.key: attr.columns[0].name for attr in GenerationRecord.__mapper__.column_attrs}


# Hook bookkeeping owned by claim_hook/finish_hook; save() never overwrites it.
_HOOK_STATE = frozenset({"id", "hook_status", "hook_attempts", "hook_error", "hook_started_at"})


@functools.cache
def _upsert(dialect: str) -> Executable:
    """save()'s statement, built once per dialect with the values as parameters: building it per save (its
    `excluded` columns above all) was 5 % of a busy worker's CPU (py-spy, BENCHMARKS.md)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, GenerationRecord.__table__)
    statement = insert(table)
    updates: dict[str, Any] = {
        name: statement.excluded[name] for name in _column_names().values() if name not in _HOOK_STATE
    }
    # A hook that has started (running, ok, failed) keeps its state: a retried attempt's record must not
    # re-arm it. Not started yet (pending, none): the new ending decides whether it is owed.
    current = table.c.hook_status
    started = current.in_(("running", "ok", "failed"))
    updates["hook_status"] = case((started, current), else_=statement.excluded.hook_status)
    return statement.on_conflict_do_update(
        index_elements=["id"],
        set_=updates,
        where=GenerationRecord.attempts < statement.excluded.attempts,
    )


def _moment(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


# Rows per transaction at most: ~550 µs of CPU per row from ~10 up, against ~1.5 ms for a row alone.
_SAVES_PER_TRANSACTION = 64


@dataclass(frozen=True, slots=True)
class _Save:
    id: str
    values: dict[str, Any]
    webhooks: Sequence[Endpoint]
    due_in: float


class ResultStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = sessions(engine)
        self.deliveries = deliveries.DeliveryStore(engine)
        self._saves = GroupCommit(self._write, limit=_SAVES_PER_TRANSACTION)

    async def save(self, result: FinalResult, webhooks: Sequence[Endpoint] = (), webhooks_due_in: float = 0.0) -> bool:
        """Insert, or replace a record left by an older attempt; never overwrite a newer attempt's record.

        A stale attempt (its lease lost) may get here after the attempt that replaced it: the `attempts`
        guard keeps the row consistent with the terminal event that is actually published. The webhook
        deliveries of the ending are written in the same transaction, so no crash can keep the record and
        lose them; the message is built from the record when it is sent. Written before the terminal event,
        they are due only after `webhooks_due_in` (the worker sends them as soon as it has published it).

        -> False when the guard refused the row. Saves that arrive while another is being written share the
        next transaction (group_commit.py); if that fails, each is retried alone, so the outcome is this save's
        own. Cancelled while waiting, the save is dropped unless its transaction had already begun.
        """
        # Core insert: keyed by column name ("metadata"), not attribute name ("meta").
        columns = _column_names()
        values = {columns[key]: value for key, value in result.row().items()}
        return await self._saves.submit(_Save(result.id, values, webhooks, webhooks_due_in))

    async def _write(self, saves: Sequence[_Save]) -> list[bool]:
        """One transaction, one upsert per row (executemany cannot expand the statement's IN parameter)."""
        statement = _upsert(self.engine.dialect.name)
        written: list[bool] = []
        async with self._sessions.begin() as session:
            for save in saves:
                outcome = await session.execute(statement, save.values)
                await deliveries.add(session, save.id, save.webhooks, save.due_in)
                written.append(bool(getattr(outcome, "rowcount", 0)))
        return written

    async def ensure_webhooks(self, generation_id: str, webhooks: Sequence[Endpoint]) -> None:
        """The deliveries of a recorded ending that was written without them (by an API process without
        WEBHOOK_URLS); nothing when it has no record yet (whoever writes it adds them)."""
        if not webhooks:
            return
        async with self._sessions.begin() as session:
            if await session.get(GenerationRecord, generation_id) is not None:
                await deliveries.add(session, generation_id, webhooks)

    async def get(self, generation_id: str) -> GenerationRecord | None:
        async with self._sessions() as session:
            return await session.get(GenerationRecord, generation_id)

    async def get_many(self, generation_ids: Collection[str]) -> dict[str, GenerationRecord]:
        if not generation_ids:
            return {}
        statement = select(GenerationRecord).where(GenerationRecord.id.in_(list(generation_ids)))
        async with self._sessions() as session:
            return {record.id: record for record in (await session.execute(statement)).scalars()}

    async def list_owned(
        self, owner: str, status: str | None, before: tuple[datetime, str] | None, limit: int
    ) -> list[GenerationRecord]:
        """An owner's records, newest first ((created_at, id) descending), strictly before `before`; without
        their text (a list shows what there is, not the answers)."""
        record = GenerationRecord
        statement = select(record).where(record.owner == owner).options(defer(record.text), defer(record.reasoning))
        if status is not None:
            statement = statement.where(record.status == status)
        if before is not None:
            created, generation_id = before
            statement = statement.where(
                or_(record.created_at < created, and_(record.created_at == created, record.id < generation_id))
            )
        statement = statement.order_by(record.created_at.desc(), record.id.desc()).limit(limit)
        async with self._sessions() as session:
            return list((await session.execute(statement)).scalars())

    async def claim_hook(self, generation_id: str, max_attempts: int, lease: timedelta) -> int | None:
        """Take the right to run on_complete now; -> the attempt number, or None if it is done or taken.

        `running` older than the lease counts as abandoned (its worker died mid-hook).
        """
        now = utcnow()
        runnable = GenerationRecord.hook_status.in_(("pending", "failed")) | (
            (GenerationRecord.hook_status == "running") & (GenerationRecord.hook_started_at < now - lease)
        )
        statement = (
            update(GenerationRecord)
            .where(GenerationRecord.id == generation_id)
            .where(GenerationRecord.hook_attempts < max_attempts)
            .where(runnable)
            .values(hook_status="running", hook_attempts=GenerationRecord.hook_attempts + 1, hook_started_at=now)
            .returning(GenerationRecord.hook_attempts)
        )
        async with self._sessions.begin() as session:
            attempt = (await session.execute(statement)).scalar_one_or_none()
        return int(attempt) if attempt is not None else None

    async def finish_hook(self, generation_id: str, ok: bool, error: str | None = None) -> None:
        values: dict[str, Any] = {"hook_status": "ok" if ok else "failed", "hook_error": error}
        async with self._sessions.begin() as session:
            await session.execute(update(GenerationRecord).where(GenerationRecord.id == generation_id).values(**values))

    async def hooks_due(self, max_attempts: int, lease: timedelta, limit: int = 100) -> list[str]:
        """Generations whose on_complete still has to run (for the worker's periodic sweep)."""
        now = utcnow()
        statement = (
            select(GenerationRecord.id)
            .where(GenerationRecord.hook_attempts < max_attempts)
            .where(
                GenerationRecord.hook_status.in_(("pending", "failed"))
                | ((GenerationRecord.hook_status == "running") & (GenerationRecord.hook_started_at < now - lease))
            )
            .limit(limit)
        )
        async with self._sessions() as session:
            return list((await session.execute(statement)).scalars())

    async def purge(self, older_than: timedelta) -> int:
        statement = delete(GenerationRecord).where(GenerationRecord.finished_at < utcnow() - older_than)
        async with self._sessions.begin() as session:
            outcome = await session.execute(statement)
            await session.execute(delete(WebhookDelivery).where(WebhookDelivery.created_at < utcnow() - older_than))
        return int(getattr(outcome, "rowcount", 0) or 0)
