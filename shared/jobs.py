"""The contract between the API (which enqueues) and the worker (which runs): job name and the stored request."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from shared.messages import ChatMessage

# arq function name; the worker registers a coroutine under this name, the API enqueues it.
JOB_FUNCTION = "run_generation"


class StoredRequest(BaseModel):
    """What the worker needs to run a generation; stored in the state hash, so the arq job carries only the id."""

    messages: list[ChatMessage]
    model: str
    provider_args: dict[str, Any] = Field(default_factory=dict)
    on_complete: str | None = None
    on_content: str | None = None
    error_context: str | None = None
