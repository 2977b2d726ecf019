"""Structured logging for the daemon: text or JSON lines carrying the session id, with secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

# Credentials that may show up in a log line: the query parameter and the Authorization header (websockets
# logs the request line and headers at debug level).
_SECRETS = (
    (re.compile(r"([?&]token=)[^&\s'\"]*", re.IGNORECASE), r"\1***"),
    (
        re.compile(r"(authorization[\"']?\s*[:=,]\s*[\"']?\s*(?:bearer\s+)?)[^\s'\",)]+", re.IGNORECASE),
        r"\1***",
    ),
)


def redact(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites a record's message with tokens masked (the formatted message: arguments included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, session (when the record has one), exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        session = getattr(record, "session", None)
        if session is not None:
            out["session"] = session
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """`time level logger: message [session=N]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        session = getattr(record, "session", None)
        return text if session is None else f"{text} [session={session}]"


def setup_logging(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Root logger -> one handler on `stream` (stderr) in `fmt` (text | json), secrets redacted."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def session_log(logger: logging.Logger, sid: int) -> logging.LoggerAdapter:
    """A logger whose records carry `session=sid` (a field in JSON, a suffix in text)."""
    return logging.LoggerAdapter(logger, {"session": sid})
