"""Request ids and the one JSON access-log line per request.

The line is on every request's path, so it is built with orjson rather than through ``logging`` and
written to stdout in batches by a background thread; README, Performance, "Access lines" has the
measurements.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import re
import select
import threading
import time
import uuid
from datetime import datetime, timezone

import orjson
from flask import Flask, Response, current_app, g, request

from tagifai_api.telemetry.logs import JsonFormatter
from tagifai_api.web.context import EXTENSION
from tagifai_api.web.responses import REQUEST_ID_HEADER

log = logging.getLogger("tagifai_api.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestIds:
    """Unique ids without a system call per request: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked worker must not repeat its parent's ids

    def _reset(self) -> None:
        self._prefix = uuid.uuid4().hex[:16]
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


class LineWriter:
    """Whole lines to a file descriptor, written together at most ``interval_s`` after they come.

    Only a daemon thread (started on first use in each process, so never in a Gunicorn master)
    writes, so a request never waits for stdout: if the reader of stdout stalls, lines pile up to
    ``max_pending`` bytes, and beyond that they are dropped and counted, and a line saying how many
    is written once stdout moves again. :meth:`flush` is also called at exit and from Gunicorn's
    ``worker_exit``.
    """

    def __init__(self, fd: int, interval_s: float, batch_bytes: int = 64 * 1024,
                 max_pending: int = 16 * 1024 * 1024) -> None:
        self.fd = fd
        self.interval_s = interval_s
        self.batch_bytes = batch_bytes
        self.max_pending = max_pending
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """A child starts empty, with fresh locks (another thread may have held them at the fork)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # flushes one at a time, so lines keep their order
        self._wake = threading.Event()
        self._lines: list[bytes] = []
        self._size = 0
        self._dropped = 0
        self._started = False

    @property
    def dropped(self) -> int:
        """Lines dropped since the last report, because stdout was not keeping up."""
        return self._dropped

    def write(self, line: bytes) -> None:
        with self._lock:
            if not self._started:  # first line in this process
                self._start()
            if self._size + len(line) > self.max_pending:
                self._dropped += 1
                return
            self._lines.append(line)
            self._size += len(line)
            full = self._size >= self.batch_bytes
        if full:
            self._wake.set()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                lines, self._lines, self._size = self._lines, [], 0
                dropped, self._dropped = self._dropped, 0
            if dropped:  # said on the same descriptor, in the same JSON as every other log line
                record = log.makeRecord(log.name, logging.WARNING, __file__, 0,
                                        "%d access lines dropped: stdout was not keeping up", (dropped,), None)
                lines.append(JsonFormatter().format(record).encode() + b"\n")
            self._write_lines(lines)

    def _write_lines(self, lines: list[bytes]) -> None:
        # chunks of at most PIPE_BUF bytes of whole lines: such a write to a pipe is atomic, so
        # lines from other workers sharing stdout never land inside one of ours
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > select.PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except OSError:
                return  # stdout is gone (closed pipe): nothing sensible to do with a log line

    def _start(self) -> None:
        self._started = True
        threading.Thread(target=self._run, name="tagifai-access-log", daemon=True).start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()


# Lines wait at most this long: a write per request cost a system call and, under load, a hand-over
# of the GIL to another thread, measured as the largest single cost of a request after the framework.
FLUSH_INTERVAL_S = 0.2
_ids = RequestIds()
_writer = LineWriter(1, FLUSH_INTERVAL_S)  # the stdout file descriptor, whatever sys.stdout is now


def flush() -> None:
    """Write out buffered access lines now (Gunicorn's ``worker_exit`` calls this)."""
    _writer.flush()


def _begin() -> None:
    state = g._get_current_object()  # one context lookup, not one per attribute
    state.start = time.perf_counter()
    incoming = request._get_current_object().headers.get(REQUEST_ID_HEADER)
    state.request_id = incoming if incoming and _VALID_ID.match(incoming) else _ids.next()


def _finish(response: Response) -> Response:
    """The request id header, the HTTP and error metrics, and the access line: the one place
    that knows a request's status and latency."""
    req = request._get_current_object()
    state = g._get_current_object()
    app = current_app._get_current_object()
    now = time.perf_counter()
    seconds = now - state.get("start", now)
    request_id = state.get("request_id") or _ids.next()
    response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    method = req.method
    tagifai = app.extensions[EXTENSION]
    http = tagifai.http_metrics
    if http is not None and not _untracked(req):
        http.request(method, req.endpoint, status, seconds)
        state.http_recorded = True
    if status >= 400:
        metrics = tagifai.metrics
        if metrics is not None:
            metrics.error(state.get("error_type") or str(status))
    if log.isEnabledFor(logging.INFO):
        # orjson, not a LogRecord, caller look-up and formatter (several times the line's own
        # cost); the same shape as JsonFormatter's lines
        pid = os.getpid()
        path = req.path
        entry = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "tagifai_api.access",
            "message": f"{method} {path} {status}",
            "pid": pid,
            "request_id": request_id,
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(seconds * 1000.0, 3),
            "worker_pid": pid,
            "texts": state.get("texts"),
            "model_version": state.get("model_version"),
            "key_name": state.get("api_key_name"),  # the key's name, never the key
        }
        if app.config["LOG_TEXTS"] and path == "/predict":
            entry["body"] = req.get_data(as_text=True)[:2000]
        _writer.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
    return response


def _untracked(req) -> bool:
    """A view the exporter's ``do_not_track``/``exclude_all_metrics`` marked (``/metrics`` itself)."""
    return hasattr(req, "prom_do_not_track") or hasattr(req, "prom_exclude_all")


def _teardown(exc: BaseException | None) -> None:
    """An exception no error handler answered is counted as the exporter counts it (status 500)."""
    if exc is None:
        return
    http = current_app.extensions[EXTENSION].http_metrics
    req = request._get_current_object()
    if http is None or _untracked(req):
        return
    http.exception(req.method)
    if not g.get("http_recorded"):  # the after-request hooks never ran to the end
        http.request(req.method, req.endpoint, 500, time.perf_counter() - g.get("start", time.perf_counter()))


def register_access_log(app: Flask) -> None:
    """Give every request an id (from ``X-Request-ID`` when it is sane), count it in the HTTP
    metrics and log it once, as JSON."""
    app.before_request(_begin)
    app.after_request(_finish)
    app.teardown_request(_teardown)
