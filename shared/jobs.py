"""The contract between the API (which enqueues) and the worker (which runs): arq's job layout, the job's name
and the stored request. Every arq key name and its pickled job are built here, nowhere else."""

from __future__ import annotations

from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
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


def job_key(job_id: str) -> str:
    """arq's job definition (the pickled call); a generation's job id is the generation id."""
    return job_key_prefix + job_id


def in_progress_key(job_id: str) -> str:
    """arq's marker of a running job, which the worker keeps as a short renewed lease (worker/lease.py)."""
    return in_progress_key_prefix + job_id


def result_key(job_id: str) -> str:
    return result_key_prefix + job_id


def serialized_job(generation_id: str, enqueue_ms: int, kwargs: dict[str, Any]) -> bytes:
    """The job exactly as arq's enqueue_job stores it: run_generation(generation_id, **kwargs), first try."""
    return serialize_job(JOB_FUNCTION, (generation_id,), kwargs, None, enqueue_ms)
