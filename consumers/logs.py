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

The Kafka client (aiokafka) logs an ERROR on every failed reconnect, several times a second per
connection while a broker is down. `ClientLogFolder` (installed with the handler, except at DEBUG)
lets the first record of each kind through, then at most one per `CLIENT_LOG_INTERVAL` seconds, which
says how many like it were held back; the service's own broker lines (`cannot reach Kafka`, `not
answering`, `answers again`) add the count and the last of them (`CLIENT_LOG.take()`).
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
    if level != "DEBUG":  # at DEBUG every record is wanted
        CLIENT_LOG.reset()
        handler.addFilter(CLIENT_LOG)
    return handler


CLIENT_LOG_INTERVAL = 60.0
"""Seconds between two records of one kind from the Kafka client (the first always shows)."""


class ClientLogFolder(logging.Filter):
    """Folds the Kafka client's repeated WARNING/ERROR records: the first of each kind (logger, level, message
    template) passes, repeats within `interval` seconds are held back and counted; the first after that passes,
    saying how many were held back. `take()` hands the count and the last one held back to the service's own
    broker lines. Records of other loggers, and the client's below WARNING, are never touched."""

    MAX_KINDS = 256

    def __init__(self, interval: float = CLIENT_LOG_INTERVAL, prefix: str = "aiokafka") -> None:
        super().__init__()
        self.interval = interval
        self.prefix = prefix
        self._kinds: dict[tuple[str, int, str], list] = {}  # kind -> [time it last passed, held back since]
        self._held = 0  # held back since the last take()
        self._last: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefix):
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            self._held += 1
            self._last = record.getMessage()[:300]
            return False
        if seen is not None and seen[1]:
            record.msg = f"{record.getMessage()} ({seen[1]} more like this in the last {now - seen[0]:.0f}s, folded)"
            record.args = ()
        if len(self._kinds) >= self.MAX_KINDS and kind not in self._kinds:
            self._kinds.clear()  # messages that differ every time: never fold more than this many kinds
        self._kinds[kind] = [now, 0]
        return True

    def reset(self) -> None:
        """Forget what was seen and held back (a new logging set-up)."""
        self._kinds.clear()
        self._held, self._last = 0, None

    def take(self) -> str:
        """' (the Kafka client logged N more errors, folded; last: ...)' for a service line, or '' if none
        were held back since the last call."""
        held, last, self._held, self._last = self._held, self._last, 0, None
        return f" (the Kafka client logged {held} more error(s), folded; last: {last})" if held else ""


CLIENT_LOG = ClientLogFolder()
"""The one folder of the Kafka client's records: installed by `configure_logging`, read by the service's lines."""


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
