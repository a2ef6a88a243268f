"""Process-wide logging setup, with a filter that redacts every known secret from every log line."""

from __future__ import annotations

import logging
import re
import sys

from shared.config import Settings

# Bearer tokens and OpenAI-style keys, in case a library logs a header or a provider echoes a key; and read
# tokens or keys in a URL's query string, which uvicorn's access log prints with every request line.
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)([?&](?:token|access_token|api_key|key)=)[^&\s\"'#]+"),
]
# The same query parameters in a bare query string (`token=...&x=1`, as a span's `url.query` holds it).
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&])(?:token|access_token|api_key|key)=)[^&\s\"'#]+")


def redact_query(url: str) -> str:
    """A URL or query string with the values of its token and key parameters replaced by [redacted]."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + "[redacted]", url)


# Argument types whose %-formatting is their str(): redacting them one by one is the same as redacting the line.
_PLAIN = (str, int, float, bool, type(None))


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
            record.args = None
        if isinstance(record.args, tuple) and all(isinstance(arg, _PLAIN) for arg in record.args):
            # Keep the arguments: some formatters read them (uvicorn's access log formats its own line from them).
            record.msg = self.redact(str(record.msg))
            record.args = tuple(self.redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        else:
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """Redact secrets in every log line this process writes, through whichever handler writes it.

    Adds a stderr handler to the root logger if there is none. The filter goes on every handler of every
    logger, not only root's: uvicorn's access and error loggers have their own handlers and do not propagate.
    arq's command line gives the `arq` logger a handler of its own although it also propagates to root, which
    printed each of its lines twice: its lines now go through root's handler only.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(level)
    arq = logging.getLogger("arq")
    if arq.propagate:
        for own in list(arq.handlers):
            arq.removeHandler(own)
    redactor = RedactSecrets(settings.secrets())
    for handler in _every_handler():
        handler.filters = [f for f in handler.filters if not isinstance(f, RedactSecrets)]
        handler.addFilter(redactor)
    logging.getLogger("sse_relay").setLevel(level)
    # The HTTP libraries log a line per request at INFO: the worker's own line says the same per generation,
    # and theirs carries the provider's URL, which some providers' keys are part of.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))


def _every_handler() -> list[logging.Handler]:
    loggers = [
        logging.getLogger(),
        *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger)),
    ]
    handlers: list[logging.Handler] = []
    for logger in loggers:
        handlers += [h for h in logger.handlers if h not in handlers]
    return handlers
