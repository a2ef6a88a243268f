"""GenerationView from either source: the live Redis state (+ stream) or the durable record."""

from __future__ import annotations

from datetime import UTC, datetime

from api.schemas import GenerationError, GenerationSummary, GenerationView, HookStatus, WebhookDeliveryView
from shared.errors import SAFE_MESSAGES, error_code_of
from shared.state import GenerationState
from shared.store.models import GenerationRecord, WebhookDelivery
from shared.store.repository import aware


def _iso(value: float | datetime | None) -> str | None:
    if value is None:
        return None
    moment = datetime.fromtimestamp(value, UTC) if isinstance(value, float) else aware(value)
    return moment.isoformat() if moment is not None else None


def _error(code: str | None) -> GenerationError | None:
    return GenerationError(code=code, message=SAFE_MESSAGES[error_code_of(code)]) if code else None


def live_summary(state: GenerationState) -> GenerationSummary:
    return GenerationSummary(
        id=state.id,
        status=state.status,
        model=state.model,
        finish_reason=state.finish_reason,
        usage=state.usage,
        error=_error(state.error_code),
        metadata=state.metadata,
        created_at=_iso(state.created_at) or "",
        started_at=_iso(state.started_at),
        finished_at=_iso(state.finished_at),
    )


def stored_summary(record: GenerationRecord) -> GenerationSummary:
    return GenerationSummary(
        id=record.id,
        status=record.status,  # type: ignore[arg-type]
        model=record.model,
        finish_reason=record.finish_reason,
        usage=record.usage,
        error=_error(record.error_code),
        metadata=record.meta,
        created_at=_iso(record.created_at) or "",
        started_at=_iso(record.started_at),
        finished_at=_iso(record.finished_at),
    )


def live_view(state: GenerationState, text: str, reasoning: str) -> GenerationView:
    hook = None
    if state.request.on_complete:
        hook = HookStatus(name=state.request.on_complete, status="pending", attempts=0, error=None)
    summary = live_summary(state).model_dump()
    return GenerationView(**summary, text=text, reasoning=reasoning or None, on_complete=hook)


def webhook_views(rows: list[WebhookDelivery]) -> list[WebhookDeliveryView]:
    return [
        WebhookDeliveryView(
            id=row.id,
            endpoint=row.endpoint_host,
            status=row.status,  # type: ignore[arg-type]
            attempts=row.attempts,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            next_attempt_at=_iso(row.next_attempt_at) if row.status == "pending" else None,
            delivered_at=_iso(row.delivered_at),
        )
        for row in rows
    ]


def stored_view(record: GenerationRecord, webhooks: list[WebhookDelivery] | None = None) -> GenerationView:
    hook = None
    if record.hook_name:
        hook = HookStatus(
            name=record.hook_name,
            status=record.hook_status,  # type: ignore[arg-type]
            attempts=record.hook_attempts,
            error=record.hook_error,
        )
    summary = stored_summary(record).model_dump()
    return GenerationView(
        **summary,
        text=record.text,
        reasoning=record.reasoning,
        on_complete=hook,
        webhooks=webhook_views(webhooks or []),
    )
