"""Webhooks, the part both API and worker know: the configured endpoints and the message for an ended generation.

The endpoints come from WEBHOOK_URLS only. A delivery row names its endpoint by a hash of the URL (the URL may
carry a token, so it is never stored) and shows its host; the worker finds the URL again by that hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from shared.config import Settings
from shared.errors import SAFE_MESSAGES, error_code_of
from shared.store.models import GenerationRecord

EVENT_TYPES = {"done": "generation.completed", "error": "generation.failed", "cancelled": "generation.cancelled"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    key: str  # sha256 of the URL
    host: str  # what GET and the logs show

    @classmethod
    def of(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return cls(url=url, key=hashlib.sha256(url.encode()).hexdigest(), host=host)


def endpoints(settings: Settings) -> list[Endpoint]:
    return [Endpoint.of(url) for url in settings.webhook_urls]


def message_id(generation_id: str, endpoint: Endpoint) -> str:
    """The `webhook-id`: one per generation and endpoint, the same on every attempt."""
    return f"msg_{generation_id}_{endpoint.key[:12]}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def message(record: GenerationRecord, include_text: bool) -> dict[str, Any]:
    """The body: `{"type", "timestamp", "data"}`, built from the stored record only (never a secret: the record
    holds none but a read token's hash, which is left out too). The same record gives the same body."""
    error = None
    if record.error_code:
        error = {"code": record.error_code, "message": SAFE_MESSAGES[error_code_of(record.error_code)]}
    data: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "model": record.model,
        "finish_reason": record.finish_reason,
        "usage": record.usage,
        "error": error,
        "metadata": record.meta,
        "attempts": record.attempts,
        "created_at": _iso(record.created_at),
        "started_at": _iso(record.started_at),
        "finished_at": _iso(record.finished_at),
    }
    if include_text:
        data["text"] = record.text
        data["reasoning"] = record.reasoning
    return {"type": EVENT_TYPES[record.status], "timestamp": _iso(record.finished_at), "data": data}
