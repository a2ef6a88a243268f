"""Chat Completions format: the request (-> our StoredRequest) and the `chat.completion(.chunk)` objects built
from a generation's events."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.compat.body import openai_body
from api.errors import ApiError
from api.schemas import MAX_METADATA_BYTES
from shared.jobs import StoredRequest
from shared.messages import ChatMessage


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="Text, or a list of `text` parts")

    def text(self, index: int) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(part.type != "text" or part.text is None for part in self.content):
            raise ApiError(
                400, "unsupported_content", "Only text content parts are supported.", param=f"messages[{index}].content"
            )
        return "".join(part.text or "" for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


class ChatCompletionCreate(BaseModel):
    """POST /v1/chat/completions. Fields OpenAI defines that are not listed here are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = Field(default=None, min_length=1, max_length=200)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    # Refused when used: one choice per generation, and no tool calling through the relay.
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and sum(len(k) + len(v) for k, v in value.items()) > MAX_METADATA_BYTES:
            raise ValueError(f"at most {MAX_METADATA_BYTES} characters")
        return value

    def refuse_unsupported(self) -> None:
        if self.n is not None and self.n != 1:
            raise ApiError(400, "unsupported_parameter", "Only n=1 is supported.", param="n")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise ApiError(400, "unsupported_parameter", "Tool calling is not supported.", param=name)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stored_request(self, default_model: str) -> StoredRequest:
        messages: list[ChatMessage] = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(self.messages)]
        args = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            # One name for the provider: `max_tokens` is what every OpenAI-compatible provider accepts.
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "stop": self.stop,
            "user": self.user,
        }
        provider_args = {key: value for key, value in args.items() if value is not None}
        return StoredRequest(messages=messages, model=self.model or default_model, provider_args=provider_args)


async def chat_body(request: Request) -> ChatCompletionCreate:
    """FastAPI dependency: the validated body, or OpenAI's 400 naming the parameter at fault."""
    return await openai_body(request, ChatCompletionCreate)


class Completion:
    """One generation seen as a chat completion: its id, creation time and model label every object."""

    def __init__(self, generation_id: str, created: int, model: str) -> None:
        self.head = {"id": generation_id, "created": created, "model": model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.head, "object": "chat.completion.chunk", "choices": [choice]}

    def usage_chunk(self, usage: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.head, "object": "chat.completion.chunk", "choices": [], "usage": usage}

    def completion(
        self, text: str, reasoning: str, finish_reason: str | None, usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning  # the field DeepSeek and DashScope use
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason or "stop"}
        return {**self.head, "object": "chat.completion", "choices": [choice], "usage": usage}
