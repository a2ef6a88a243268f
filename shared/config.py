"""Settings for every process (API, worker, CLI), read from the environment and a `.env` file."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# DashScope's OpenAI-compatible endpoint: the seed's default provider.
DASHSCOPE_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
# The one caller every request is when no API keys are configured (auth off).
ANONYMOUS_CALLER = "anonymous"
# Default models when AI_MODEL_NAME is unset, by provider: each provider refuses the other's model names.
DASHSCOPE_DEFAULT_MODEL = "qwen-plus"
OPENAI_DEFAULT_MODEL = "gpt-4.1-mini"  # small, current, and takes max_tokens/temperature like older chat models


def default_model(base_url: str | None) -> str:
    """The model for a provider endpoint (None: the SDK's default, OpenAI). Any other endpoint gets the seed's
    DashScope model: set AI_MODEL_NAME for it."""
    host = (urlsplit(base_url).hostname or "") if base_url else "api.openai.com"
    if host == "api.openai.com":
        return OPENAI_DEFAULT_MODEL
    return DASHSCOPE_DEFAULT_MODEL


_MAKE_ONE = (
    "set it to whsec_ followed by 24 to 64 random bytes in base64, e.g. "
    "python -c \"import base64,secrets; print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def check_webhook_secret(secret: str) -> None:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 24..64 bytes. The message never echoes it."""
    if not secret.startswith("whsec_"):
        raise ValueError(f"WEBHOOK_SECRET must start with whsec_: {_MAKE_ONE}")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"WEBHOOK_SECRET is not valid base64 after whsec_: {_MAKE_ONE}") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"WEBHOOK_SECRET decodes to {len(key)} bytes, not 24 to 64: {_MAKE_ONE}")


def _host_of(url: str) -> str:
    # A URL may carry credentials or a token in its query: messages show only the scheme and host.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" if parts.hostname else "(no host)"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of sse-relay; the README's configuration table lists the same names and defaults."""

    # Inputs stay out of error messages: a bad WEBHOOK_URLS entry may carry a token, a key may be mistyped.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True)

    # Provider.
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "DASHSCOPE_API_KEY")
    )
    dashscope_api_key: SecretStr | None = Field(default=None, validation_alias="DASHSCOPE_API_KEY")
    openai_base_url: str | None = Field(default=None, validation_alias="OPENAI_BASE_URL")
    # Empty: chosen by provider (default_model).
    ai_model_name: str = Field(default="", validation_alias=AliasChoices("AI_MODEL_NAME", "QWEN_MODEL_NAME"))
    upstream_read_timeout_s: float = Field(default=60.0, gt=0, validation_alias="UPSTREAM_READ_TIMEOUT_S")
    upstream_connect_timeout_s: float = Field(default=10.0, gt=0, validation_alias="UPSTREAM_CONNECT_TIMEOUT_S")
    upstream_max_retries: int = Field(default=2, ge=0, le=10, validation_alias="UPSTREAM_MAX_RETRIES")

    # Redis.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    streams_redis_url: str | None = Field(default=None, validation_alias="STREAMS_REDIS_URL")
    key_prefix: str = Field(default="sse-relay", validation_alias="SSE_RELAY_KEY_PREFIX")
    queue_name: str = Field(default="sse-relay:queue", validation_alias="SSE_RELAY_QUEUE_NAME")

    # Durable store: finished results and hook outcomes (SQLite by default, PostgreSQL in production).
    database_url: str = Field(default="sqlite+aiosqlite:///./sse-relay.db", validation_alias="DATABASE_URL")

    # API.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="SSE_RELAY_API_KEYS")
    max_body_bytes: int = Field(default=1_048_576, gt=0, validation_alias="MAX_BODY_BYTES")
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="CORS_ALLOW_ORIGINS"
    )
    # Where clients reach the relay's read routes, when the generation was started by a route of another app
    # (api.helper): `Location` and `events_url` then point there instead of at the app's own path.
    public_url: str = Field(default="", validation_alias="SSE_RELAY_PUBLIC_URL")
    sse_ping_s: float = Field(default=15.0, gt=0, validation_alias="SSE_PING_S")
    sse_send_timeout_s: float = Field(default=30.0, gt=0, validation_alias="SSE_SEND_TIMEOUT_S")
    sse_read_block_ms: int = Field(default=5_000, ge=100, validation_alias="SSE_READ_BLOCK_MS")
    # Reader tasks (one Redis connection each) per API process; XREAD's cost grows with its key count.
    reader_shards: int = Field(default=2, ge=1, le=64, validation_alias="READER_SHARDS")

    # Streams.
    stream_maxlen: int = Field(default=100_000, ge=100, validation_alias="STREAM_MAXLEN")
    live_ttl_s: int = Field(default=86_400, ge=60, validation_alias="LIVE_TTL_S")
    finished_ttl_s: int = Field(default=86_400, ge=1, validation_alias="FINISHED_TTL_S")
    # Off by default: the worker writes as soon as the previous write is answered, and batches grow with load.
    # A value spaces one generation's writes at least this far apart (fewer commands, that much more lag).
    coalesce_ms: float = Field(default=0.0, ge=0, le=1000, validation_alias="COALESCE_MS")

    # Worker.
    worker_max_jobs: int = Field(default=500, ge=1, validation_alias="WORKER_MAX_JOBS")
    job_timeout_s: int = Field(default=900, ge=5, validation_alias="JOB_TIMEOUT_S")
    job_max_tries: int = Field(default=3, ge=1, validation_alias="JOB_MAX_TRIES")
    cancel_poll_s: float = Field(default=0.5, gt=0, validation_alias="CANCEL_POLL_S")
    # SIGTERM: running generations get this long to finish; then they are handed back to the queue.
    worker_shutdown_grace_s: float = Field(default=50.0, ge=0, validation_alias="WORKER_SHUTDOWN_GRACE_S")
    worker_poll_delay_s: float = Field(default=0.5, gt=0, validation_alias="WORKER_POLL_DELAY_S")
    # Each worker process serves Prometheus metrics here (0: not at all); a taken port is a warning, not a crash.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535, validation_alias="WORKER_METRICS_PORT")
    worker_metrics_host: str = Field(default="0.0.0.0", validation_alias="WORKER_METRICS_HOST")

    # Per-caller limits (a caller is a bearer key; everyone is one caller when auth is off).
    max_prompt_chars: int = Field(default=200_000, ge=1, validation_alias="MAX_PROMPT_CHARS")
    max_messages: int = Field(default=500, ge=1, validation_alias="MAX_MESSAGES")
    max_tokens_limit: int = Field(default=65_536, ge=1, validation_alias="MAX_TOKENS_LIMIT")
    max_concurrent_per_caller: int = Field(default=100, ge=1, validation_alias="MAX_CONCURRENT_PER_CALLER")
    # With auth off every client is the one anonymous caller: its limit caps the whole service, so it is its own.
    max_concurrent_anonymous: int = Field(default=1000, ge=1, validation_alias="MAX_CONCURRENT_ANONYMOUS")

    # Durable results and hooks.
    auto_migrate: bool = Field(default=True, validation_alias="AUTO_MIGRATE")
    result_retention_days: float = Field(default=30.0, gt=0, validation_alias="RESULT_RETENTION_DAYS")
    hook_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="SSE_RELAY_HOOK_MODULES"
    )
    hooks: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="SSE_RELAY_HOOKS")
    hook_timeout_s: float = Field(default=30.0, gt=0, validation_alias="HOOK_TIMEOUT_S")
    hook_max_attempts: int = Field(default=3, ge=1, le=20, validation_alias="HOOK_MAX_ATTEMPTS")
    # One on_content call; past it the generation goes on and the call is left to finish in its thread.
    on_content_timeout_s: float = Field(default=5.0, gt=0, validation_alias="ON_CONTENT_TIMEOUT_S")
    # Threads for sync hooks per worker process (their own pool, not the event loop's default executor).
    hook_threads: int = Field(default=64, ge=1, le=1024, validation_alias="HOOK_THREADS")
    idempotency_ttl_s: int = Field(default=86_400, ge=1, validation_alias="IDEMPOTENCY_TTL_S")
    # A running job holds a short lease (arq's in-progress key), renewed while it runs: a crashed worker's
    # generation is picked up by another worker about this many seconds later instead of job_timeout + 10 s.
    job_lease_s: float = Field(default=3.0, ge=1, validation_alias="JOB_LEASE_S")

    # Webhooks: operator-configured endpoints only (a request never names a URL).
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="WEBHOOK_URLS")
    webhook_secret: SecretStr | None = Field(default=None, validation_alias="WEBHOOK_SECRET")
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, validation_alias="WEBHOOK_TIMEOUT_S")
    # Waits between attempts double from the first to the cap: with the defaults about 5 hours in all.
    webhook_max_attempts: int = Field(default=15, ge=1, le=100, validation_alias="WEBHOOK_MAX_ATTEMPTS")
    webhook_retry_first_s: float = Field(default=5.0, gt=0, validation_alias="WEBHOOK_RETRY_FIRST_S")
    webhook_retry_max_s: float = Field(default=3600.0, gt=0, validation_alias="WEBHOOK_RETRY_MAX_S")
    webhook_include_text: bool = Field(default=False, validation_alias="WEBHOOK_INCLUDE_TEXT")
    # How often each worker looks for deliveries that are due (a finished generation wakes it at once).
    webhook_poll_s: float = Field(default=2.0, gt=0, le=60, validation_alias="WEBHOOK_POLL_S")

    @field_validator("api_keys", "cors_allow_origins", "hook_modules", "hooks", "webhook_urls", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("webhook_urls")
    @classmethod
    def _webhook_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"WEBHOOK_URLS: {_host_of(url)!r} is not an http(s) URL with a host")
        if len(set(urls)) != len(urls):
            raise ValueError("WEBHOOK_URLS lists the same URL twice")
        return urls

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None or not secret.get_secret_value():
            return None
        check_webhook_secret(secret.get_secret_value())
        return secret

    @model_validator(mode="after")
    def _webhooks_signed(self) -> Settings:
        if self.webhook_urls and self.webhook_secret is None:
            raise ValueError(f"WEBHOOK_URLS is set but WEBHOOK_SECRET is not: {_MAKE_ONE}")
        return self

    @model_validator(mode="after")
    def _provider_defaults(self) -> Settings:
        # An empty key (compose's ${OPENAI_API_KEY:-}, a .env template) counts as unset.
        if self.dashscope_api_key is not None and not self.dashscope_api_key.get_secret_value():
            self.dashscope_api_key = None
        if self.openai_api_key is not None and not self.openai_api_key.get_secret_value():
            self.openai_api_key = self.dashscope_api_key
        # Only DASHSCOPE_API_KEY given: the key is DashScope's, so talk to DashScope unless told otherwise.
        only_dashscope = self.dashscope_api_key is not None and self.openai_api_key == self.dashscope_api_key
        if self.openai_base_url in (None, "") and only_dashscope:
            self.openai_base_url = DASHSCOPE_BASE_URL
        if self.openai_base_url == "":
            self.openai_base_url = None
        if not self.ai_model_name:
            self.ai_model_name = default_model(self.openai_base_url)
        return self

    def concurrency_limit(self, caller: str) -> int:
        """Unfinished generations `caller` may have at once."""
        if caller == ANONYMOUS_CALLER:
            return self.max_concurrent_anonymous
        return self.max_concurrent_per_caller

    @property
    def streams_url(self) -> str:
        return self.streams_redis_url or self.redis_url

    @property
    def provider_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

    def secrets(self) -> list[str]:
        """Every secret value this process knows, for log redaction."""
        dashscope = self.dashscope_api_key.get_secret_value() if self.dashscope_api_key else None
        webhook = self.webhook_secret.get_secret_value() if self.webhook_secret else None
        # A webhook URL may hold a token in its path (chat-style incoming hooks); httpx logs each request's
        # URL in its normalised form, so both forms are redacted.
        urls = [form for url in self.webhook_urls for form in (url, str(httpx.URL(url)))]
        found = [self.provider_key, dashscope, webhook, *urls, *(self.api_keys or [])]
        return [value for value in found if value]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
