"""The server's structured log: one JSON object per line, on standard error.

Events go through the standard :mod:`logging` module (logger ``sampledrec.serve``), with their
fields passed as ``extra={"fields": {...}}``; :class:`JsonFormatter` writes each record as one
line: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``event`` (the message), then the fields.
Libraries underneath (aiohttp) log through the same handler, so the whole stream is JSON.

What never appears: keys, tokens, callers' numbers, call references, attribute values. The
server's own events carry only what is safe by construction (door names, addresses, counts,
status codes, routes as their patterns); an exception is written as its type and the places it
went through, without its message, which might quote what a client sent.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

__all__ = ["LOGGER_NAME", "JsonFormatter", "configure_logging", "event"]

LOGGER_NAME: Final = "sampledrec.serve"
_logger: Final = logging.getLogger(LOGGER_NAME)


def event(
    name: str, *, level: int = logging.INFO, exc: BaseException | None = None, **fields: Any
) -> None:
    """Log the event ``name`` with ``fields`` (JSON values: text, numbers, booleans, lists);
    with ``exc``, where that exception went (its type and frames, not its message)."""
    if _logger.isEnabledFor(level):
        exc_info = None if exc is None else (type(exc), exc, exc.__traceback__)
        _logger.log(level, name, exc_info=exc_info, extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                doc.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, _, tb = record.exc_info
            doc["error_type"] = exc_type.__name__
            doc["error_at"] = [
                f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
                for frame in traceback.extract_tb(tb)
            ][-8:]
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(stream: TextIO | None = None, level: str = "info") -> logging.Handler:
    """Send every log record of the process to ``stream`` (standard error) as JSON lines, and
    Python warnings with them; returns the handler (to remove it again)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    _logger.setLevel(level.upper())
    logging.captureWarnings(True)
    return handler
