"""A generation's state in Redis: create, claim, publish, cancel and read, each one atomic round trip."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from redis.asyncio import Redis

from shared import events, lua
from shared.config import Settings
from shared.errors import ErrorCode
from shared.ids import next_stream_id
from shared.jobs import StoredRequest
from shared.keys import GenerationKeys, active_key, generation_keys
from shared.redis_client import StreamsRedis
from shared.redis_direct import DirectScript

Status = Literal["queued", "running", "done", "error", "cancelled"]
PublishOutcome = Literal["written", "finished", "stale", "missing"]
_PUBLISH_OUTCOMES: dict[int, PublishOutcome] = {1: "written", 0: "finished", -1: "stale", -2: "missing"}


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: PublishOutcome
    last_id: str
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Literal["ok", "terminal", "missing"]
    attempt: int
    had_output: bool
    state: GenerationState | None = None


@dataclass(frozen=True, slots=True)
class GenerationState:
    """The state hash, decoded."""

    id: str
    status: Status
    model: str
    request: StoredRequest
    metadata: dict[str, Any]
    owner: str
    attempt: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    first_id: str | None
    terminal_id: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    error_code: str | None
    cancel_requested: bool
    read_token_sha: str | None = None

    @classmethod
    def from_hash(cls, generation_id: str, raw: dict[str, str]) -> GenerationState:
        def num(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        return cls(
            id=generation_id,
            status=raw["status"],  # type: ignore[arg-type]
            model=raw.get("model", ""),
            request=StoredRequest.model_validate_json(raw["request"]),
            metadata=json.loads(raw.get("metadata") or "{}"),
            owner=raw.get("owner", ""),
            attempt=int(raw.get("attempt") or 0),
            created_at=float(raw["created_at"]),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            first_id=raw.get("first_id"),
            terminal_id=raw.get("terminal_id"),
            finish_reason=raw.get("finish_reason") or None,
            usage=json.loads(raw["usage"]) if raw.get("usage") else None,
            error_code=raw.get("error_code") or None,
            cancel_requested=raw.get("cancel") == "1",
            read_token_sha=raw.get("read_token_sha") or None,
        )


def parse_claim(generation_id: str, reply: list[Any]) -> Claim:
    """The CLAIM script's reply (also the tail of worker/pickup.py's take-and-claim script's)."""
    outcome, attempt, xlen, *flat = reply
    raw = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
    state = GenerationState.from_hash(generation_id, raw) if _text(outcome) == "ok" and "request" in raw else None
    return Claim(outcome=_text(outcome), attempt=int(attempt), had_output=int(xlen) > 0, state=state)  # type: ignore[arg-type]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Generations:
    """All reads and writes of generation state, for both the API and the worker."""

    def __init__(self, redis: StreamsRedis, settings: Settings, direct_publish: bool = False) -> None:
        """`direct_publish`: the publish script on connections of its own (`DirectScript`), for the worker,
        which calls it for every few tokens; a Redis Cluster keeps redis-py's path, which routes by slot."""
        self.redis = redis
        self.settings = settings
        # RedisCluster has the same register_script (keys share a hash tag); redis-py types it for Redis only.
        client = cast(Redis, redis)
        self._create = client.register_script(lua.CREATE)
        self._direct: DirectScript | None = None
        if direct_publish and isinstance(redis, Redis):
            pool = redis.connection_pool
            self._direct = DirectScript(pool, lua.PUBLISH, pool.connection_kwargs.get("socket_timeout") or 30.0)
        self._publish = self._direct or client.register_script(lua.PUBLISH)
        self._claim = client.register_script(lua.CLAIM)
        self._cancel = client.register_script(lua.CANCEL)
        self._admit = client.register_script(lua.ADMIT)
        self._next_id_basis = client.register_script(lua.NEXT_ID_BASIS)
        self._reap = client.register_script(lua.REAP)

    def keys(self, generation_id: str) -> GenerationKeys:
        return generation_keys(self.settings.key_prefix, generation_id)

    def state_fields(
        self, request: StoredRequest, metadata: dict[str, Any], owner: str, read_token_sha: str = ""
    ) -> dict[str, str]:
        return {
            "read_token_sha": read_token_sha,
            "status": "queued",
            "model": request.model,
            "request": request.model_dump_json(),
            "metadata": json.dumps(metadata, separators=(",", ":"), ensure_ascii=False),
            "owner": owner,
            "attempt": "0",
            "created_at": repr(time.time()),
        }

    async def create(
        self,
        generation_id: str,
        request: StoredRequest,
        metadata: dict[str, Any],
        owner: str,
        read_token_sha: str = "",
    ) -> None:
        keys = self.keys(generation_id)
        fields = self.state_fields(request, metadata, owner, read_token_sha)
        args: list[str | int] = [self.settings.live_ttl_s]
        for name, value in fields.items():
            args += [name, value]
        await self._create(keys=[keys.state], args=args)

    async def get(self, generation_id: str) -> GenerationState | None:
        raw: dict[str, str] = await self.redis.hgetall(self.keys(generation_id).state)  # type: ignore[misc]
        if not raw or "status" not in raw or "request" not in raw:
            return None
        return GenerationState.from_hash(generation_id, raw)

    async def progress(self, generation_id: str) -> tuple[str | None, str | None, int]:
        """(status, terminal id, attempt) without the request: None as status if the generation is gone."""
        fields = ["status", "terminal_id", "attempt"]
        status, terminal_id, attempt = await self.redis.hmget(self.keys(generation_id).state, fields)  # type: ignore[misc]
        return status, terminal_id, int(attempt or 0)

    async def cancel_requested(self, generation_id: str) -> bool:
        flag = await self.redis.hget(self.keys(generation_id).state, "cancel")  # type: ignore[misc]
        return bool(flag == "1")

    async def claim(self, generation_id: str) -> Claim:
        keys = self.keys(generation_id)
        reply = await self._claim(keys=[keys.events, keys.state], args=[repr(time.time())])
        return parse_claim(generation_id, reply)

    async def publish(
        self,
        generation_id: str,
        attempt: int,
        payloads: list[str],
        terminal_status: Status | None = None,
        terminal_fields: dict[str, str] | None = None,
        terminal_id: str | None = None,
        first: bool = True,
        seq: int = 0,
    ) -> PublishResult:
        """Append events (already JSON); with `terminal_status`, the last one ends the generation.

        `seq` (1, 2, ... within an attempt) makes the write safe to repeat: a repeat of an applied write
        appends nothing and answers as written.
        """
        keys = self.keys(generation_id)
        fields = dict(terminal_fields or {})
        if terminal_status is not None:
            fields.setdefault("finished_at", repr(time.time()))
        args: list[str | int] = [
            str(attempt),
            self.settings.stream_maxlen,
            self.settings.live_ttl_s,
            self.settings.finished_ttl_s,
            terminal_status or "",
            json.dumps(fields) if fields else "",
            terminal_id or "",
            "1" if first else "0",
            seq,
            *payloads,
        ]
        code, last_id, cancel = await self._publish(keys=[keys.events, keys.state, keys.bell], args=args)
        return PublishResult(_PUBLISH_OUTCOMES[int(code)], str(last_id), cancel == "1")

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
        await self.redis.aclose()

    async def next_terminal_id(self, generation_id: str) -> str:
        """An id after every entry of the stream, near Redis's clock (not this process's)."""
        seconds, micros, last = await self._next_id_basis(keys=[self.keys(generation_id).events])
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return next_stream_id(_text(last) or None, now_ms)

    async def reap(self, generation_id: str, attempt: int, min_age_s: float) -> tuple[str, str]:
        """End a generation whose job is gone with error{worker_lost} -> (outcome, terminal id); see lua.REAP."""
        keys = self.keys(generation_id)
        settings = self.settings
        max_ttl_ms = int((settings.live_ttl_s - min_age_s) * 1000)
        args: list[str | int] = [
            str(attempt),
            settings.stream_maxlen,
            settings.finished_ttl_s,
            events.error(ErrorCode.WORKER_LOST),
            max_ttl_ms,
        ]
        outcome, terminal_id = await self._reap(keys=[keys.events, keys.state, keys.bell], args=args)
        return _text(outcome), _text(terminal_id)

    async def cancel(self, generation_id: str) -> tuple[str, str]:
        """-> (outcome, status): outcome is 'missing', 'finished', 'cancelled' (was queued) or 'cancelling'."""
        keys = self.keys(generation_id)
        args: list[str | int] = [
            self.settings.stream_maxlen,
            self.settings.finished_ttl_s,
            events.error(ErrorCode.CANCELLED),
            repr(time.time()),
        ]
        outcome, status = await self._cancel(keys=[keys.events, keys.state, keys.bell], args=args)
        return str(outcome), str(status)

    async def admit(self, owner: str, generation_id: str) -> bool:
        """Count a new generation against its caller's concurrency limit; False if the caller is at it."""
        key, (now, deadline, limit, ttl) = self.admission(owner)
        return bool(await self._admit(keys=[key], args=[now, deadline, generation_id, limit, ttl]))

    def admission(self, owner: str) -> tuple[str, tuple[float, float, int, int]]:
        """The caller's active set and ADMIT's now, deadline, limit and ttl (also used by CREATE_AND_ENQUEUE)."""
        settings = self.settings
        now = time.time()
        deadline = now + settings.job_timeout_s * (settings.job_max_tries + 1) + 60
        limit = settings.concurrency_limit(owner)
        return active_key(settings.key_prefix, owner), (now, deadline, limit, int(deadline - now))

    async def release(self, owner: str, generation_id: str) -> None:
        await self.redis.zrem(active_key(self.settings.key_prefix, owner), generation_id)
