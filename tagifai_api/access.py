"""Request ids and the one JSON access-log line per request.

The access line is written straight to stdout with orjson rather than through ``logging``: it
is on every request's path, and a LogRecord, caller lookup and formatter cost several times the
line itself. It has the same shape as :class:`tagifai_api.logs.JsonFormatter` lines.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import orjson
from flask import Flask, Response, current_app, g, request

from tagifai_api.responses import REQUEST_ID_HEADER

log = logging.getLogger("tagifai_api.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIds:
    """Unique ids without a system call per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():  # a forked worker must not repeat its parent's ids
            self._pid = os.getpid()
            self._prefix = uuid.uuid4().hex[:16]
            self._counter = itertools.count()
        return f"{self._prefix}{next(self._counter):016x}"


_ids = RequestIds()
_write_lock = threading.Lock()


def _begin() -> None:
    g.start = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER)
    g.request_id = incoming if incoming and _VALID_ID.match(incoming) else _ids.next()


def _finish(response: Response) -> Response:
    request_id = g.get("request_id") or _ids.next()
    response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    if status >= 400:
        metrics = current_app.extensions.get("tagifai_metrics")
        if metrics is not None:
            metrics.error(g.get("error_type") or str(status))
    if log.isEnabledFor(logging.INFO):
        now = time.perf_counter()
        entry = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "tagifai_api.access",
            "message": f"{request.method} {request.path} {status}",
            "pid": os.getpid(),
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": status,
            "latency_ms": round((now - g.get("start", now)) * 1000.0, 3),
            "worker_pid": os.getpid(),
            "texts": g.get("texts"),
            "model_version": g.get("model_version"),
        }
        if current_app.config["LOG_TEXTS"] and request.path == "/predict":
            entry["body"] = request.get_data(as_text=True)[:2000]
        line = orjson.dumps(entry) + b"\n"
        with _write_lock:  # one whole line per write, even from many threads
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    return response


def register_access_log(app: Flask) -> None:
    """Give every request an id (from ``X-Request-ID`` when it is sane) and log it once, as JSON."""
    app.before_request(_begin)
    app.after_request(_finish)
