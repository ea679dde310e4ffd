"""The fields of the response envelope, in one place.

Standard library only: the app's :func:`tagifai_api.web.responses.construct_response` and Gunicorn's
own error answers (:mod:`tagifai_api.server.errors`, loaded by the master) both build on it.
"""

from __future__ import annotations

from datetime import datetime, timezone


def body(status: int, message: str, method: str | None, url: str | None, request_id: str | None,
         data: dict | None = None) -> dict:
    """message, method, status-code, timestamp (ISO 8601, UTC), url, request-id, and data if any."""
    out = {
        "message": message,
        "method": method,
        "status-code": status,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "url": url,
        "request-id": request_id,
    }
    if data is not None:
        out["data"] = data
    return out
