"""shared.logging.RedactSecrets: configured secrets, bearer tokens and sk- keys never reach a log line."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from shared.config import Settings
from shared.logging import RedactSecrets, configure_logging

SECRET = "configured-secret-value-42"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger whose only handler writes to a buffer through the redacting filter."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactSecrets([SECRET]))
    logger = logging.getLogger(f"test_redaction.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def test_configured_secret_in_message_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.info(f"calling with {SECRET} now")
    out = buffer.getvalue()
    assert SECRET not in out
    assert "calling with [redacted] now" in out


def test_configured_secret_in_percent_args_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.warning("key=%s count=%d", SECRET, 3)
    out = buffer.getvalue()
    assert SECRET not in out
    assert "key=[redacted] count=3" in out


def test_bearer_header_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.info("headers: %s", {"Authorization": "Bearer xyz"})
    logger.info("raw header authorization: bearer abc.def-ghi")
    out = buffer.getvalue()
    assert "xyz" not in out
    assert "abc.def-ghi" not in out
    assert out.count("[redacted]") == 2


def test_openai_style_key_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.error("provider said: Incorrect API key provided: %s.", "sk-proj-AbCdEf123456_xyz")
    out = buffer.getvalue()
    assert "sk-proj-AbCdEf123456_xyz" not in out
    assert "AbCdEf123456" not in out
    assert "[redacted]" in out


def test_secret_in_exception_traceback_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    try:
        raise RuntimeError(f"auth failed for {SECRET} with Bearer tok-999 and sk-abcdefgh12345678")
    except RuntimeError:
        logger.exception("upstream failed")
    out = buffer.getvalue()
    assert "Traceback" in out
    assert "RuntimeError" in out
    assert SECRET not in out
    assert "tok-999" not in out
    assert "sk-abcdefgh12345678" not in out
    assert out.count("[redacted]") >= 3


def test_secret_in_exc_info_tuple_is_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        logger.error("failed", exc_info=(type(exc), exc, exc.__traceback__))
    out = buffer.getvalue()
    assert "ValueError" in out
    assert SECRET not in out
    assert "[redacted]" in out


def test_text_without_secrets_is_unchanged(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = captured
    logger.info("generation %s done: %d chars", "gen_abc", 12)
    assert buffer.getvalue() == "INFO generation gen_abc done: 12 chars\n"


def test_short_configured_secrets_are_ignored() -> None:
    # A 1-3 character "secret" would shred every line; only values of 4+ characters are replaced.
    redactor = RedactSecrets(["a", "", "abcd"])
    assert redactor.redact("a cat abcd") == "a cat [redacted]"


def test_malformed_percent_format_does_not_raise_from_the_logging_call(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    # The stdlib never lets a bad log call raise into the caller (Handler.handleError); the filter must not either.
    logger, buffer = captured
    logger.info("two placeholders %s %s", "only-one")  # must not raise TypeError
    logger.info("still logging after %s", SECRET)
    assert "still logging after [redacted]" in buffer.getvalue()


def test_configure_logging_installs_redaction_on_root_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.DEBUG)
    settings = Settings(openai_api_key=SecretStr("sk-provider-key-abcdef"), api_keys=["client-key-xyz1"])
    configure_logging(settings)
    configure_logging(settings)  # idempotent: one redacting filter, not two
    assert sum(isinstance(f, RedactSecrets) for f in handler.filters) == 1
    logger = logging.getLogger(f"sse_relay.test.{uuid.uuid4().hex}")
    logger.warning("provider key %s, client key %s", "sk-provider-key-abcdef", "client-key-xyz1")
    out = buffer.getvalue()
    assert "sk-provider-key-abcdef" not in out
    assert "client-key-xyz1" not in out
    assert out.count("[redacted]") == 2
