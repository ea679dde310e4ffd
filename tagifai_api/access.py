"""Request ids and the one JSON access-log line per request."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from tagifai_api.responses import REQUEST_ID_HEADER

log = logging.getLogger("tagifai_api.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def _begin() -> None:
    g.start = time.perf_counter()
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex


def _finish(response: Response) -> Response:
    request_id = g.get("request_id") or uuid.uuid4().hex
    response.headers[REQUEST_ID_HEADER] = request_id
    status = response.status_code
    if status >= 400:
        metrics = current_app.extensions.get("tagifai_metrics")
        if metrics is not None:
            metrics.error(g.get("error_type") or str(status))
    if log.isEnabledFor(logging.INFO):
        latency_ms = (time.perf_counter() - g.get("start", time.perf_counter())) * 1000.0
        extra = {
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "status": status,
            "latency_ms": round(latency_ms, 3),
            "worker_pid": os.getpid(),
            "texts": g.get("texts"),
            "model_version": g.get("model_version"),
        }
        if current_app.config["LOG_TEXTS"] and request.path == "/predict":
            extra["body"] = request.get_data(as_text=True)[:2000]
        log.info("%s %s %d", request.method, request.path, status, extra=extra)
    return response


def register_access_log(app: Flask) -> None:
    """Give every request an id (from ``X-Request-ID`` when it is sane) and log it once, as JSON."""
    app.before_request(_begin)
    app.after_request(_finish)
