"""Logging of `hiddenstate serve`: plain text or one JSON object per line, secrets masked.

    configure_logging("INFO", "json", secrets=[password])

JSON lines carry `ts` (UTC, RFC 3339, milliseconds), `level`, `logger`, `message`, every extra
field the call passed (`log.info("...", extra={"partitions": 4})`), and `exc` with the traceback
when there is one. Whatever the format, every occurrence of a secret's value in a message,
an extra field or a traceback is replaced by `***` (a second line of defence: the service never puts
the password into a message in the first place).

Levels: INFO for lifecycle (start, connect, assignment, alerts raised/cleared, a progress line
a minute, stop), WARNING for what an operator may have to act on (broker unreachable, produce or
commit failed), ERROR when the service gives up. Nothing is logged per reading.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
MASK = "***"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class MaskingFormatter(logging.Formatter):
    """Wraps a formatter: every occurrence of a secret in its output (message, extra fields,
    traceback), also in its JSON-escaped form, becomes `***`."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        forms = set()
        for secret in secrets:
            if secret:
                forms.add(secret)
                forms.add(orjson.dumps(secret).decode()[1:-1])
        self.secrets = sorted(forms, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.mask(self.inner.format(record))


def configure_logging(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = (),
                      stream: TextIO | None = None) -> logging.Handler:
    """Set up the root logger: one stderr handler with the format and the secret masker; returns it."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(MaskingFormatter(inner, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # aiokafka is chatty at INFO (every group join, every coordinator change): only its warnings
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    return handler


def error_text(exc: BaseException) -> str:
    """An exception for a log line: its type and message, the type once (`KafkaTimeoutError: ...`)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


def partitions_text(tps: Iterable) -> str:
    """Topic partitions for a log line, sorted: `readings[0],readings[1]` (`-` for none)."""
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps, key=lambda t: (t.topic, t.partition))) or "-"


def _rfc3339(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"
