"""Logs on stderr: one JSON object per line (`json`), or one readable line per record (`text`).

`JOBSD_LOG_FORMAT` chooses; unset, a terminal gets `text` and anything else (a file, a pipe, a log collector)
gets `json`. Both carry the job id (and the other extra keys) when a record has one.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "resolve_log_format"]

_EXTRA_KEYS = ("job_id", "worker_id", "new_status", "method")


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """`05:10:11.123 INFO  jobsd.app: message [job_id=…]`: a time of day (UTC), the level, the logger, the text."""

    def format(self, record: logging.LogRecord) -> str:
        clock = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(f"{key}={value}" for key in _EXTRA_KEYS if (value := getattr(record, key, None)) is not None)
        line = f"{clock} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_log_format(log_format: str, stream: TextIO | None = None) -> str:
    """`text` or `json`: the setting's value, or (empty) text when `stream` (stderr) is a terminal."""
    if log_format:
        return log_format
    stream = stream or sys.stderr
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def configure_logging(level: str, log_format: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if resolve_log_format(log_format) == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's per-request access log would drown everything else; the gateway exports metrics instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
