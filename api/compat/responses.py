"""Responses API format: the request (-> our StoredRequest), the `response` object, and its numbered stream events.

Sequence numbers are a function of the text, not of a connection: each structural event counts 1, each delta
counts its length in code points, and an event's number is the last count it covers. A generation's events
are therefore numbered alike on every replay, on every API instance, from the Redis stream or from the stored
record however the text was cut into pieces; and `starting_after=N` tells exactly how much text the client
holds, so a resume sends the rest of a delta it had only part of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat.body import openai_body
from api.compat.continuity import End, Output, Piece
from api.compat.errors import GENERATION_RESTARTED, RESTARTED_MESSAGE
from api.errors import ApiError
from shared.errors import SAFE_MESSAGES, error_code_of
from shared.jobs import StoredRequest
from shared.messages import ChatMessage


class InputPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    text: str | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputPart]

    def text(self, index: int) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(part.type not in ("input_text", "output_text") or part.text is None for part in self.content):
            raise ApiError(400, "unsupported_content", "Only text input is supported.", param=f"input[{index}].content")
        return "".join(part.text or "" for part in self.content)


class ResponseCreate(BaseModel):
    """POST /v1/responses. Fields OpenAI defines that are not listed here are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(default=None, min_length=1, max_length=200)
    input: str | list[InputMessage] = Field(min_length=1)
    instructions: str | None = Field(default=None, max_length=1_000_000)
    stream: bool = False
    background: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, str] | None = None
    # Refused when used: no tool calling through the relay, and no server-side conversation state.
    tools: list[Any] | None = None
    previous_response_id: str | None = None

    @field_validator("metadata")
    @classmethod
    def _openai_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters, values up to 512")
        return value

    def refuse_unsupported(self) -> None:
        if self.tools:
            raise ApiError(400, "unsupported_parameter", "Tool calling is not supported.", param="tools")
        if self.previous_response_id is not None:
            message = "previous_response_id is not supported; send the conversation in `input`."
            raise ApiError(400, "unsupported_parameter", message, param="previous_response_id")

    def stored_request(self, default_model: str) -> StoredRequest:
        messages: list[ChatMessage] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        if isinstance(self.input, str):
            messages.append({"role": "user", "content": self.input})
        else:
            messages += [{"role": m.role, "content": m.text(i)} for i, m in enumerate(self.input)]
        args = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_output_tokens}
        provider_args = {key: value for key, value in args.items() if value is not None}
        return StoredRequest(messages=messages, model=self.model or default_model, provider_args=provider_args)


async def response_body(request: Request) -> ResponseCreate:
    """FastAPI dependency: the validated body, or OpenAI's 400 naming the parameter at fault."""
    return await openai_body(request, ResponseCreate)


# Our generation status -> the response's.
_STATUS = {
    "queued": "queued",
    "running": "in_progress",
    "done": "completed",
    "error": "failed",
    "cancelled": "cancelled",
}


@dataclass(slots=True)
class Facts:
    """What a `response` object says about one generation, from its live state or its record."""

    id: str
    created_at: int
    model: str
    status: str  # our status
    text: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error_code: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The request's parameters, while the generation is live (its record does not keep them).
    request: StoredRequest | None = None
    background: bool | None = None

    def response_status(self) -> str:
        if self.status == "done" and self.finish_reason == "length":
            return "incomplete"
        return _STATUS.get(self.status, "in_progress")


def item_ids(generation_id: str) -> tuple[str, str]:
    """(reasoning item id, message item id), derived from the generation's id so every replay names them alike."""
    suffix = generation_id.removeprefix("gen_")
    return f"rs_{suffix}", f"msg_{suffix}"


def usage_of(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat Completions usage (what providers report) -> Responses usage."""
    if not usage:
        return None
    details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "output_tokens_details": {"reasoning_tokens": int(details.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or 0),
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [output_text_part(text)]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def response_object(facts: Facts, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `response` object. Without `output`, it is built from the facts' text and reasoning."""
    status = facts.response_status()
    if output is None:
        output = _output_of(facts, status)
    request = facts.request
    args = request.provider_args if request is not None else {}
    system = request.messages[0] if request is not None and request.messages else None
    error = None
    if status in ("failed", "cancelled"):
        code = error_code_of(facts.error_code or "internal")
        error = {"code": code.value, "message": SAFE_MESSAGES[code]}
    return {
        "id": facts.id,
        "object": "response",
        "created_at": facts.created_at,
        "status": status,
        "background": facts.background,
        "model": facts.model,
        "output": output,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": system["content"] if system is not None and system["role"] == "system" else None,
        "max_output_tokens": args.get("max_tokens"),
        "temperature": args.get("temperature"),
        "top_p": args.get("top_p"),
        "metadata": facts.metadata,
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "usage": usage_of(facts.usage) if status in ("completed", "incomplete") else None,
    }


def _output_of(facts: Facts, status: str) -> list[dict[str, Any]]:
    reasoning_id, message_id = item_ids(facts.id)
    item_status = "in_progress" if status in ("queued", "in_progress") else "completed"
    if status in ("failed", "cancelled", "incomplete"):
        item_status = "incomplete"
    output = []
    if facts.reasoning:
        output.append(reasoning_item(reasoning_id, facts.reasoning, "completed" if facts.text else item_status))
    if facts.text or status in ("completed", "incomplete"):
        output.append(message_item(message_id, facts.text, item_status))
    return output


@dataclass(slots=True)
class Numbered:
    """One stream event and the first count it covers (its `sequence_number` is the last)."""

    first: int
    event: dict[str, Any]

    def after(self, starting_after: int | None) -> dict[str, Any] | None:
        """The event as a client that holds everything up to `starting_after` needs it, or None."""
        if starting_after is None or self.first > starting_after:
            return self.event
        if self.event["sequence_number"] <= starting_after:
            return None
        cut = starting_after - self.first + 1  # the part of this delta the client already has
        return {**self.event, "delta": self.event["delta"][cut:]}


class Transcript:
    """Turns a generation's continuity outputs into numbered Responses events (see the module's docstring)."""

    def __init__(self, facts: Facts) -> None:
        self.facts = facts
        self.count = 0
        self.reasoning_id, self.message_id = item_ids(facts.id)
        self.open: Literal["reasoning", "message"] | None = None
        self.output: list[dict[str, Any]] = []
        self.text = ""
        self.reasoning = ""

    def start(self) -> list[Numbered]:
        queued = Facts(self.facts.id, self.facts.created_at, self.facts.model, "queued", metadata=self.facts.metadata)
        queued.request, queued.background = self.facts.request, self.facts.background
        running = Facts(self.facts.id, self.facts.created_at, self.facts.model, "running", metadata=self.facts.metadata)
        running.request, running.background = self.facts.request, self.facts.background
        return [
            self._event("response.created", {"response": response_object(queued, [])}),
            self._event("response.in_progress", {"response": response_object(running, [])}),
        ]

    def feed(self, output: Output) -> list[Numbered]:
        if isinstance(output, Piece):
            return self._piece(output)
        return self._end(output)

    def _event(self, kind: str, fields: dict[str, Any], weight: int = 1) -> Numbered:
        first = self.count
        self.count += weight
        return Numbered(first, {"type": kind, **fields, "sequence_number": self.count - 1})

    def _piece(self, piece: Piece) -> list[Numbered]:
        if piece.channel == "reasoning":
            if self.open == "message" or self._index_of(self.message_id) is not None:
                return []  # reasoning after the answer started has no place in this layout (documented)
            events = self._open_reasoning() if self.open is None else []
            self.reasoning += piece.text
            where = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
            return [
                *events,
                self._event("response.reasoning_text.delta", {**where, "delta": piece.text}, len(piece.text)),
            ]
        events = self._close_reasoning() + (self._open_message() if self.open is None else [])
        self.text += piece.text
        where = {"item_id": self.message_id, "output_index": len(self.output) - 1, "content_index": 0}
        delta = {**where, "delta": piece.text, "logprobs": []}
        return [*events, self._event("response.output_text.delta", delta, len(piece.text))]

    def _index_of(self, item_id: str) -> int | None:
        return next((i for i, item in enumerate(self.output) if item["id"] == item_id), None)

    def _open_reasoning(self) -> list[Numbered]:
        self.open = "reasoning"
        item = reasoning_item(self.reasoning_id, "", "in_progress")
        item["content"] = []
        self.output.append(item)
        where = {"item_id": self.reasoning_id, "output_index": 0}
        return [
            self._event("response.output_item.added", {"output_index": 0, "item": item}),
            self._event("response.content_part.added", {**where, "content_index": 0, "part": _reasoning_part("")}),
        ]

    def _close_reasoning(self) -> list[Numbered]:
        if self.open != "reasoning":
            return []
        self.open = None
        item = self.output[0] = reasoning_item(self.reasoning_id, self.reasoning, "completed")
        where = {"item_id": self.reasoning_id, "output_index": 0, "content_index": 0}
        return [
            self._event("response.reasoning_text.done", {**where, "text": self.reasoning}),
            self._event("response.content_part.done", {**where, "part": _reasoning_part(self.reasoning)}),
            self._event("response.output_item.done", {"output_index": 0, "item": item}),
        ]

    def _open_message(self) -> list[Numbered]:
        self.open = "message"
        item = message_item(self.message_id, None, "in_progress")
        self.output.append(item)
        index = len(self.output) - 1
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        return [
            self._event("response.output_item.added", {"output_index": index, "item": item}),
            self._event("response.content_part.added", {**where, "part": output_text_part("")}),
        ]

    def _close_message(self, status: str) -> list[Numbered]:
        index = len(self.output) - 1
        item = self.output[index] = message_item(self.message_id, self.text, status)
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        self.open = None
        return [
            self._event("response.output_text.done", {**where, "text": self.text, "logprobs": []}),
            self._event("response.content_part.done", {**where, "part": output_text_part(self.text)}),
            self._event("response.output_item.done", {"output_index": index, "item": item}),
        ]

    def _end(self, end: End) -> list[Numbered]:
        if end.event is None:
            error = {"code": GENERATION_RESTARTED, "message": RESTARTED_MESSAGE, "param": None}
            return [self._event("error", error)]
        facts = self.facts
        facts.text, facts.reasoning = self.text, self.reasoning
        if end.event.get("type") == "done":
            data = end.event.get("data") or {}
            facts.status, facts.finish_reason, facts.usage = "done", data.get("finish_reason"), data.get("usage")
            status = "incomplete" if facts.response_status() == "incomplete" else "completed"
            events = self._close_reasoning()
            events += self._open_message() if self._index_of(self.message_id) is None else []
            events += self._close_message(status)
            kind = "response.completed" if status == "completed" else "response.incomplete"
            return [*events, self._event(kind, {"response": response_object(facts, self.output)})]
        code = str(end.event.get("code") or "internal")
        facts.status, facts.error_code = ("cancelled" if code == "cancelled" else "error"), code
        # A cancelled response has no event of its own in the Responses stream: it ends as `response.failed`
        # whose response has status `cancelled`.
        return [self._event("response.failed", {"response": response_object(facts, self.output)})]


def _reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}
