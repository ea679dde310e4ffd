"""JSON log lines on stdout, one object per line, for the app and for Gunicorn alike.

Standard library only: ``gunicorn.conf.py`` names :class:`JsonFormatter` in its ``logconfig_dict``,
and the Gunicorn master must not import the web stack.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

#: attributes every LogRecord has; anything else was passed through ``extra=`` and is logged
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"timestamp", "level", "logger", "message", "pid", ...extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "INFO") -> None:
    """Send the ``tagifai_api`` loggers to stdout as JSON (idempotent, so tests may call it often)."""
    logger = logging.getLogger("tagifai_api")
    logger.setLevel(level.upper())
    logger.propagate = False
    if not any(getattr(h, "_tagifai", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._tagifai = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def gunicorn_logconfig(level: str | None = None) -> dict:
    """A ``logging.config`` dict that makes Gunicorn's own error log JSON on stdout."""
    level = (level or os.environ.get("TAGIFAI_LOG_LEVEL", "INFO")).upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tagifai_api.telemetry.logs.JsonFormatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["stdout"], "propagate": False},
        },
    }
