"""Webhook settings, endpoints, message bodies and backoff: validated at start-up, never echoing a secret."""

from __future__ import annotations

import base64
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.store.models import GenerationRecord
from shared.webhooks import Endpoint, message, message_id
from worker.webhooks import backoff_s

GOOD = "whsec_" + base64.b64encode(b"k" * 32).decode()
URL = "https://hooks.example.com/services/T0/B0/path-secret-xyz"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("WEBHOOK_URLS", "WEBHOOK_SECRET", "WEBHOOK_INCLUDE_TEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env


def settings(**env: str) -> Settings:
    return Settings(**env)  # type: ignore[arg-type]


def test_webhooks_are_off_by_default() -> None:
    current = Settings()
    assert current.webhook_urls == [] and current.webhook_secret is None and not current.webhook_include_text


def test_urls_and_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_URLS", f" {URL} , http://127.0.0.1:8080/in ")
    monkeypatch.setenv("WEBHOOK_SECRET", GOOD)
    current = Settings()
    assert current.webhook_urls == [URL, "http://127.0.0.1:8080/in"]
    assert GOOD in current.secrets() and URL in current.secrets()


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("not-prefixed", "must start with whsec_"),
        ("whsec_!!!notbase64", "not valid base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "decodes to 65 bytes"),
    ],
)
def test_a_malformed_secret_is_refused_with_a_clear_message(secret: str, says: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(WEBHOOK_URLS=URL, WEBHOOK_SECRET=secret)
    text = str(refused.value)
    assert says in text and "WEBHOOK_SECRET" in text and "token_bytes(32)" in text
    assert secret not in text and "path-secret-xyz" not in text


def test_urls_without_a_secret_are_refused() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_URLS is set but WEBHOOK_SECRET is not"):
        settings(WEBHOOK_URLS=URL)


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "hooks.example.com/x", "https:///nohost"])
def test_a_url_that_is_not_http_with_a_host_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(WEBHOOK_URLS=f"{url}?token=tok-123", WEBHOOK_SECRET=GOOD)
    assert "WEBHOOK_URLS" in str(refused.value) and "tok-123" not in str(refused.value)


def test_the_same_url_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="same URL twice"):
        settings(WEBHOOK_URLS=f"{URL},{URL}", WEBHOOK_SECRET=GOOD)


def test_an_endpoint_is_known_by_hash_and_host_and_its_message_id_is_stable() -> None:
    endpoint = Endpoint.of(URL)
    assert endpoint.host == "hooks.example.com" and "path-secret" not in endpoint.key
    assert Endpoint.of("http://127.0.0.1:8080/in").host == "127.0.0.1:8080"
    assert message_id("gen_1", endpoint) == message_id("gen_1", Endpoint.of(URL)) != message_id("gen_2", endpoint)
    assert message_id("gen_1", endpoint) != message_id("gen_1", Endpoint.of(URL + "2"))


def _record(status: str, error_code: str | None = None) -> GenerationRecord:
    finished = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return GenerationRecord(
        id="gen_1", owner="alice", status=status, model="demo", text="the answer", reasoning=None,
        finish_reason="stop" if status == "done" else None, usage=None, error_code=error_code,
        error_message=None, meta={"k": "v"}, terminal_event_id="1-0", read_token_sha="f" * 64, attempts=1,
        created_at=finished, started_at=None, finished_at=finished.replace(tzinfo=None),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [("done", None, "generation.completed"), ("error", "upstream_auth", "generation.failed"),
     ("cancelled", "cancelled", "generation.cancelled")],
)  # fmt: skip
def test_the_message_type_follows_the_ending(status: str, code: str | None, kind: str) -> None:
    body = message(_record(status, code), include_text=False)
    assert body["type"] == kind and body["data"]["status"] == status
    assert body["timestamp"] == body["data"]["finished_at"] == "2026-01-02T03:04:05Z"  # naive SQLite time is UTC
    assert (body["data"]["error"] or {}).get("code") == code
    assert "text" not in body["data"] and "read_token" not in str(body) and "f" * 64 not in str(body)


def test_the_message_has_text_only_when_asked() -> None:
    body = message(_record("done"), include_text=True)
    assert body["data"]["text"] == "the answer" and body["data"]["reasoning"] is None


def test_backoff_starts_within_seconds_doubles_and_is_capped() -> None:
    current = Settings()
    waits = [backoff_s(current, attempt) for attempt in range(1, current.webhook_max_attempts)]
    assert 4 <= waits[0] <= 6
    assert all(later > earlier for earlier, later in itertools.pairwise(waits[:9]))
    assert max(waits) <= current.webhook_retry_max_s * 1.1
    assert 3 * 3600 < sum(waits) < 8 * 3600, "retries go on for hours"
