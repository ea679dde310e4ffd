"""Gunicorn's own error answers (a request it cannot parse never reaches the app) in the envelope.

Gunicorn writes those as HTML; clients of this service expect the same JSON everywhere. Standard
library only: ``gunicorn.conf.py`` installs :func:`write_error` in place of Gunicorn's.
"""

from __future__ import annotations

import json
import uuid

from tagifai_api.web import envelope


def write_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error``: the same status line, a JSON body."""
    from gunicorn.util import write_nonblock

    request_id = uuid.uuid4().hex
    message = f"{reason}: {mesg}" if mesg else reason
    # the request could not be read: its method and URL are unknown
    body = json.dumps(envelope.body(int(status_int), message, None, None, request_id), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"  # as every answer of the app (web/responses.py)
        "Cache-Control: no-store\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)
