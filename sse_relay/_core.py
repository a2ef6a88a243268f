"""The client's protocol logic without I/O: typed events, results, errors, and the resume state machine that
both RelayClient (sync) and AsyncRelayClient drive over their own httpx connections."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
# Statuses worth another try: the service or a proxy in front of it is restarting or overloaded.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TERMINAL_TYPES = frozenset({"done", "error"})


class RelayError(Exception):
    """A generation ended with an `error` event, the service refused a request, or it could not be reached.

    `code` is the error event's or the JSON error's code (`upstream_auth`, `not_found`, ...), or one of the
    client's own: `connection_lost` (reconnects exhausted), `integrity_mismatch` (the assembled text does not
    match `done`'s length/sha256), `http_error` (an answer that is not the service's JSON error).
    """

    def __init__(self, code: str, message: str, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: `type` is content, reasoning, reset, done or error; `data` its payload."""

    type: str
    data: Any
    id: str
    code: str | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def as_dict(self) -> dict[str, Any]:
        line: dict[str, Any] = {"id": self.id, "type": self.type, "data": self.data}
        if self.type == "error":
            line.update(code=self.code, error=self.error)
        return line


@dataclass(frozen=True, slots=True)
class Result:
    """A finished generation's answer (`text` is the content after the last `reset`)."""

    id: str
    status: str
    text: str
    reasoning: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Generation:
    """GET /v1/generations/{id}, or one item of the list (where `text` and `reasoning` are None)."""

    id: str
    status: str
    model: str
    text: str | None
    reasoning: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    error: dict[str, str] | None
    metadata: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def from_json(cls, view: dict[str, Any]) -> Generation:
        return cls(
            id=view["id"],
            status=view["status"],
            model=view.get("model", ""),
            text=view.get("text"),
            reasoning=view.get("reasoning"),
            finish_reason=view.get("finish_reason"),
            usage=view.get("usage"),
            error=view.get("error"),
            metadata=view.get("metadata") or {},
            created_at=view.get("created_at", ""),
            started_at=view.get("started_at"),
            finished_at=view.get("finished_at"),
        )

    def result(self) -> Result:
        """The answer of a finished generation; RelayError if it did not end `done`."""
        if self.status == "done":
            return Result(self.id, self.status, self.text or "", self.reasoning, self.finish_reason, self.usage)
        if self.status in ("error", "cancelled"):
            error = self.error or {"code": self.status, "message": f"The generation ended {self.status}."}
            raise RelayError(error["code"], error["message"], retryable=False)
        raise RelayError("not_finished", f"Generation {self.id} is still {self.status}.", retryable=True)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of GET /v1/generations: `next` is the cursor of the following page (None at the end)."""

    items: list[Generation]
    next: str | None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect policy: `tries` failed attempts in a row (no event in between), exponential with jitter."""

    # About 20 s of tries before giving up: enough for one API instance to restart.
    tries: int = 15
    first_s: float = 0.1
    max_s: float = 2.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.max_s, self.first_s * 2.0 ** (failures - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request the I/O side should make."""

    method: Literal["GET", "POST"]
    path: str
    headers: dict[str, str]
    json: dict[str, Any] | None = None


def body_of(
    prompt: str | None, messages: list[dict[str, str]] | None, model: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {key: value for key, value in params.items() if value is not None}
    if prompt is not None:
        body["prompt"] = prompt
    if messages is not None:
        body["messages"] = messages
    if model is not None:
        body["model"] = model
    return body


def list_params(status: str | None, limit: int | None, after: str | None) -> dict[str, str]:
    params = {"status": status, "limit": None if limit is None else str(limit), "after": after}
    return {key: value for key, value in params.items() if value is not None}


def error_from_response(status: int, content: bytes) -> RelayError:
    """The service's JSON error (`{"error": {"code", "message"}}`), or a generic one for a proxy's page."""
    try:
        detail = json.loads(content)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {status} from the relay."
    return RelayError(code, message, retryable=status in RETRY_STATUSES, status=status)


def give_up_or_wait(backoff: Backoff, failures: int, cause: Exception, doing: str) -> float:
    """The delay before try number `failures` + 1, or RelayError `connection_lost` once they are used up."""
    if failures > backoff.tries:
        raise RelayError(
            "connection_lost",
            f"Could not reach the relay while {doing}: {failures} tries failed in a row (last: {cause}).",
            retryable=True,
        ) from cause
    return backoff.delay(failures)


def _stream_id(value: str) -> tuple[int, int] | None:
    match = _STREAM_ID.fullmatch(value)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_event(event_id: str, data: str) -> Event:
    payload = json.loads(data)
    return Event(
        type=str(payload.get("type")),
        data=payload.get("data"),
        id=event_id,
        code=payload.get("code"),
        error=payload.get("error"),
    )


@dataclass
class Follow:
    """One generation followed across connections: what to request next, which events are new, and the
    text so far.

    Without a generation id it starts one (POST, with an Idempotency-Key so that a retried POST attaches to
    the same generation); with one it reads `/events` from `last_id`. An event at or before `last_id` was
    already delivered and is dropped, so a reconnect never repeats one. Failures count only while no new
    event arrives; after `backoff.tries` of them in a row the client gives up with `connection_lost`.
    """

    backoff: Backoff
    create: dict[str, Any] | None = None
    generation_id: str | None = None
    last_id: str | None = None
    auth: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    terminal: Event | None = None
    finished: bool = False  # 204: the resume point was the terminal event
    failures: int = 0
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Only a follower that saw the stream from its start can check done's length/sha256.
        self.whole = self.last_id is None

    @property
    def over(self) -> bool:
        return self.terminal is not None or self.finished

    def request(self) -> Call:
        headers = {"Accept": "text/event-stream", **self.auth}
        if self.generation_id is None:
            assert self.create is not None
            return Call("POST", "/v1/generations", {**headers, "Idempotency-Key": self.idempotency_key}, self.create)
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        return Call("GET", f"/v1/generations/{self.generation_id}/events", headers)

    def opened(self, status: int, generation_id: str | None) -> bool:
        """A response arrived: True if it is a stream to read; False for 204 (nothing more to read)."""
        if generation_id and self.generation_id is None:
            self.generation_id = generation_id
        if status == 204:
            self.finished = True
            return False
        return status == 200

    def refused(self, status: int, content: bytes) -> float:
        """A non-stream answer: the delay before trying again, or RelayError if retrying cannot help."""
        error = error_from_response(status, content)
        if not error.retryable:
            raise error
        return self.dropped(error)

    def dropped(self, cause: Exception) -> float:
        """The connection failed or ended before the terminal event: the delay before reconnecting."""
        self.failures += 1
        where = f"generation {self.generation_id}" if self.generation_id else "a new generation"
        return give_up_or_wait(
            self.backoff, self.failures, cause, f"following {where} (resume from event {self.last_id})"
        )

    def accept(self, event_id: str, data: str) -> Event | None:
        """A received SSE event: the typed event if it is new, None for a ping or one already delivered."""
        if not data or self.over:
            return None
        current = _stream_id(event_id)
        if current is None:
            raise RelayError("bad_event", f"Event without a valid stream id: {event_id!r}.")
        if self.last_id is not None and current <= (_stream_id(self.last_id) or (0, 0)):
            return None
        event = parse_event(event_id, data)
        self.last_id = event_id
        self.failures = 0
        if event.type == "reset":
            self._text.clear()
            self._reasoning.clear()
        elif event.type == "content":
            self._text.append(str(event.data))
        elif event.type == "reasoning":
            self._reasoning.append(str(event.data))
        elif event.terminal:
            if event.type == "done" and self.whole:
                self._check(event)
            self.terminal = event
        return event

    def _check(self, done: Event) -> None:
        text = "".join(self._text)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        data = done.data or {}
        if data.get("length") != len(text) or data.get("sha256") != digest:
            raise RelayError(
                "integrity_mismatch",
                f"The assembled text ({len(text)} characters, sha256 {digest[:12]}...) does not match the done "
                f"event's ({data.get('length')} characters, sha256 {str(data.get('sha256'))[:12]}...).",
                retryable=True,
            )

    def result(self) -> Result | None:
        """The answer once the terminal event arrived (RelayError for `error`); None after a 204, whose
        result must be fetched with GET."""
        terminal = self.terminal
        if terminal is None:
            return None
        if terminal.type == "error":
            retryable = bool((terminal.data or {}).get("retryable"))
            raise RelayError(terminal.code or "internal", terminal.error or "The generation failed.", retryable)
        data = terminal.data or {}
        assert self.generation_id is not None
        reasoning = "".join(self._reasoning) or None
        text = "".join(self._text)
        return Result(self.generation_id, "done", text, reasoning, data.get("finish_reason"), data.get("usage"))
