"""The durable tables: one row per finished generation, and one per webhook delivery of its ending."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class GenerationRecord(Base):
    __tablename__ = "generations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), default="anonymous")
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text, default="")
    reasoning: Mapped[str | None] = mapped_column(Text, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # The terminal event's stream id: a replay from the store keeps it, so a client resuming from it gets 204.
    terminal_event_id: Mapped[str] = mapped_column(String(48))
    read_token_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # on_complete bookkeeping: none | pending | running | ok | failed.
    hook_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    hook_status: Mapped[str] = mapped_column(String(16), default="none")
    hook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    hook_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    hook_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_generations_finished_at", "finished_at"),
        Index("ix_generations_hook_status", "hook_status"),
        # GET /v1/generations: one owner's records, newest first.
        Index("ix_generations_owner_created_at", "owner", "created_at"),
    )


class WebhookDelivery(Base):
    """One webhook message to one configured endpoint for one ended generation (created with its record)."""

    __tablename__ = "webhook_deliveries"

    # The `webhook-id` header: the same on every attempt, so receivers can dedupe.
    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    generation_id: Mapped[str] = mapped_column(String(64))
    # sha256 of the endpoint URL (the URL itself may hold a token: never stored) and its host, for display.
    endpoint_key: Mapped[str] = mapped_column(String(64))
    endpoint_host: Mapped[str] = mapped_column(String(255))
    # pending | delivered | failed (attempts used up, or the endpoint is no longer configured).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A worker sending it holds it until then; a worker killed mid-send leaves it to lapse.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        UniqueConstraint("generation_id", "endpoint_key", name="uq_webhook_deliveries_generation_endpoint"),
        # The delivery loop's query: pending rows that are due.
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_created_at", "created_at"),
    )
