"""Process-wide logging setup, with a filter that redacts every known secret from every log line."""

from __future__ import annotations

import logging
import re
import sys

from shared.config import Settings

# Bearer tokens and OpenAI-style keys, in case a library logs a header or a provider echoes a key.
_PATTERNS = [re.compile(r"(?i)(bearer\s+)[^\s\"',]+"), re.compile(r"sk-[A-Za-z0-9_\-]{8,}")]


class RedactSecrets(logging.Filter):
    """Rewrites the final message (after %-formatting), so arguments and tracebacks are covered too."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # A malformed log call (wrong argument count): keep its content, redacted, instead of raising.
            message = f"{record.msg} (log arguments: {record.args!r})"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """Install the redacting filter on every root handler (adding a stderr handler if there is none)."""
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    redactor = RedactSecrets(settings.secrets())
    for handler in root.handlers:
        handler.filters = [f for f in handler.filters if not isinstance(f, RedactSecrets)]
        handler.addFilter(redactor)
    logging.getLogger("sse_relay").setLevel(level)
