"""A keep-alive HTTP client that never sends a request twice, for fault and soak runs.

``requests``/urllib3 may retry or hide how a connection failed; counting lost requests needs to know
exactly that. The only resend allowed is the safe one: a kept-alive connection the server has closed
(or written to unasked) is noticed *before* any byte of the next request goes out, and a fresh
connection is used instead. Any failure after the first byte was sent is a lost request, reported,
never retried (the server may have acted on it).
"""

from __future__ import annotations

import http.client
import select
import time
from dataclasses import dataclass


@dataclass
class Outcome:
    """One request: its status (None when lost), when it was sent and when it ended (monotonic)."""

    status: int | None
    sent_at: float
    ended_at: float
    body: bytes = b""
    error: str = ""
    connection_close: bool = False


class KeepAliveClient:
    """One persistent connection to ``host:port``, reopened only when that is safe."""

    def __init__(self, host: str, port: int, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.conn: http.client.HTTPConnection | None = None
        self.connects = 0  # connections opened (the first one included)
        self.stale = 0  # kept-alive connections found closed before a send, and replaced

    def _usable(self) -> bool:
        """The open connection can take a request: nothing is waiting to be read on it (EOF, RST, or
        bytes the server sent unasked all mean it is done with this connection)."""
        sock = self.conn.sock if self.conn is not None else None
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is not None and not self._usable():
            self.stale += 1
            self.close()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self.conn.connect()
            self.connects += 1
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Outcome:
        """Send once; a failure before any byte was sent (cannot connect) raises ``ConnectionError``,
        one after is a lost request (status None)."""
        headers = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
        try:
            conn = self._connection()
        except OSError as exc:
            self.close()
            raise ConnectionError(f"cannot connect: {exc}") from exc
        sent_at = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(None, sent_at, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
        closing = response.will_close
        if closing:
            self.close()
        return Outcome(response.status, sent_at, time.monotonic(), data, connection_close=closing)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
