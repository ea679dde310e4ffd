"""The one response envelope every route answers with."""

from __future__ import annotations

from datetime import datetime, timezone
from http import HTTPStatus

import orjson
from flask import Response, g, request

REQUEST_ID_HEADER = "X-Request-ID"


def construct_response(
    status: int,
    data: dict | None = None,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Wrap ``data`` in the envelope: message, method, status-code, timestamp, url, request-id, data.

    ``status-code`` is always the HTTP status of the response itself; ``message`` defaults to
    the HTTP phrase; ``data`` is left out when there is none.
    """
    body = {
        "message": message or HTTPStatus(status).phrase,
        "method": request.method,
        "status-code": status,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "url": request.url,
        "request-id": g.get("request_id"),
    }
    if data is not None:
        body["data"] = data
    return Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),  # marshmallow keys list errors by index
        status=status,
        headers=headers,
        mimetype="application/json",
    )
