"""The Gunicorn worker's response writer, keep-alive handling and version pin, without a server
(see tests/integration/test_worker_gunicorn.py for the worker under real Gunicorn)."""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import sys
from types import SimpleNamespace

import gunicorn
import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import TConn

from tagifai_api.server import worker
from tests import helpers


class RecordingSocket:
    """Stands in for a client socket: remembers every ``sendall``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def _response(method: str = "GET", version: tuple[int, int] = (1, 1)):
    req = SimpleNamespace(method=method, version=version, should_close=lambda: False)
    sock = RecordingSocket()
    cfg = SimpleNamespace(protocol="http", sendfile=None, is_ssl=False)
    return worker.OneWriteResponse(req, sock, cfg), sock


def test_a_single_chunk_response_leaves_in_one_write():
    resp, sock = _response()
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
    resp.write(b'{"ok":true}')
    resp.close()
    assert len(sock.sent) == 1
    head, _, body = sock.sent[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 11" in head and b"\r\nConnection: keep-alive" in head
    assert body == b'{"ok":true}'
    assert resp.headers_sent and resp.sent == 11


def test_a_streamed_response_is_chunked_correctly():
    resp, sock = _response()
    resp.start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
    for part in (b"hello ", b"", b"world"):
        resp.write(part)
    resp.close()
    wire = b"".join(sock.sent)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    assert sock.sent[0].endswith(b"6\r\nhello \r\n")  # the headers went out with the first chunk


def test_an_empty_first_chunk_still_sends_the_headers_at_once():
    resp, sock = _response()
    resp.start_response("200 OK", [("Content-Length", "3")])
    resp.write(b"")
    assert len(sock.sent) == 1 and sock.sent[0].endswith(b"\r\n\r\n")
    resp.write(b"abc")
    assert sock.sent[1] == b"abc"


def test_a_body_longer_than_its_content_length_is_cut():
    resp, sock = _response()
    resp.start_response("200 OK", [("Content-Length", "2")])
    resp.write(b"abcdef")
    resp.write(b"more")
    resp.close()
    assert b"".join(sock.sent).partition(b"\r\n\r\n")[2] == b"ab"


@pytest.mark.parametrize("method, status", [("HEAD", "200 OK"), ("GET", "304 Not Modified"), ("GET", "204 No Content")])
def test_answers_without_a_body_send_headers_only(method, status):
    resp, sock = _response(method)
    resp.start_response(status, [("Content-Length", "5")] if method == "HEAD" else [])
    resp.write(b"body!")
    resp.close()
    wire = b"".join(sock.sent)
    assert wire.startswith(f"HTTP/1.1 {status}\r\n".encode()) and wire.endswith(b"\r\n\r\n")
    assert b"body!" not in wire


def test_http_1_0_gets_no_chunking():
    resp, sock = _response(version=(1, 0))
    resp.start_response("200 OK", [("Content-Type", "text/plain")])
    resp.write(b"plain")
    resp.close()
    wire = b"".join(sock.sent)
    assert wire.startswith(b"HTTP/1.0 200 OK") and wire.endswith(b"\r\n\r\nplain")
    assert b"Transfer-Encoding" not in wire



def _echo_path(environ, start_response):
    """A WSGI app answering each request with its path, so answers tell requests apart."""
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


def _read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` whole responses, ``(head, body)`` each, read from ``sock`` by their Content-Length."""
    data, out = b"", []
    while len(out) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"\r\nContent-Length: (\d+)", head)[1])
            if len(rest) >= length:
                out.append((head, rest[:length]))
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"the worker closed the connection after {len(out)} of {count} answers"
        data += chunk
    return out


@pytest.fixture
def served():
    """A ThreadWorker as it is after the fork, minus the master and the thread pool, and one loopback
    connection to it: ``(worker, the connection as the worker holds it, the client's socket)``."""
    cfg = Config()
    w = worker.ThreadWorker(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
    w.wsgi = _echo_path
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        sock, address = listener.accept()
        conn = TConn(cfg, sock, address, listener.getsockname())
    yield w, conn, client
    client.close()
    conn.sock.close()
    w.tmp.close()


def _handle(w, conn) -> bool:
    """What the main loop and a pool thread do with a readable connection: count it as waiting
    for a thread (enqueue_req), then serve it; returns whether to keep the connection."""
    with w._waiting_lock:
        w._waiting += 1
    return w.handle(conn)


def test_kept_alive_requests_are_served_in_place_and_the_connection_stays_open(served):
    w, conn, client = served
    client.sendall(_request("/one") + _request("/two"))  # pipelined
    assert _handle(w, conn) is True  # kept: back to the main loop's poller, not closed
    assert w.nr == 2  # the second request was served by the same thread, in place
    answers = _read_responses(client, 2)
    assert [body for _, body in answers] == [b"/one", b"/two"]
    assert all(b"\r\nConnection: keep-alive\r\n" in head for head, _ in answers)
    client.sendall(_request("/three"))  # later, on the same connection
    assert _handle(w, conn) is True and w.nr == 3
    ((head, body),) = _read_responses(client, 1)
    assert body == b"/three" and b"\r\nConnection: keep-alive\r\n" in head


def test_a_kept_alive_connection_goes_back_to_the_main_loop_while_another_waits(served):
    w, conn, client = served
    w._waiting = 1  # another connection is waiting for a thread
    client.sendall(_request("/one") + _request("/two"))
    assert _handle(w, conn) is True and w.nr == 1  # answered one, kept the connection, served no more
    ((head, body),) = _read_responses(client, 1)
    assert body == b"/one" and b"\r\nConnection: keep-alive\r\n" in head
    assert _handle(w, conn) is True and w.nr == 2  # the next hand-off serves the request left waiting
    assert _read_responses(client, 1)[0][1] == b"/two"


def test_a_stopping_worker_answers_with_connection_close(served):
    w, conn, client = served
    w.alive = False  # SIGTERM, or max_requests reached
    client.sendall(_request("/one") + _request("/two"))
    assert _handle(w, conn) is False and w.nr == 1
    ((head, body),) = _read_responses(client, 1)
    assert body == b"/one" and b"\r\nConnection: close\r\n" in head

def test_another_gunicorn_version_is_refused_with_a_clear_message(monkeypatch):
    with pytest.raises(worker.GunicornVersionError, match=r"gunicorn==27\.0\.1, found 27\.1\.0"):
        worker.check_gunicorn_version((27, 1, 0))
    monkeypatch.setattr(gunicorn, "version_info", (26, 0, 0))
    with pytest.raises(RuntimeError, match="GUNICORN_WORKER_CLASS=gthread"):  # the reloaded module's own class
        importlib.reload(worker)
    monkeypatch.undo()
    importlib.reload(worker)  # the installed version is the pinned one
    assert tuple(gunicorn.version_info) == worker.GUNICORN_VERSION


def test_gunicorn_of_another_version_stops_at_start_in_one_line():
    """The master refuses to start (one line on stderr, exit 1) rather than fail in every worker."""
    code = ("import sys, gunicorn; gunicorn.version_info = (27, 1, 0); "
            "sys.argv = ['gunicorn', '-c', 'gunicorn.conf.py', 'wsgi:app']; "
            "from gunicorn.app.wsgiapp import run; run()")
    out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GUNICORN_BIND": f"127.0.0.1:{helpers.free_port()}"})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: tagifai_api.server.worker.ThreadWorker is written for gunicorn==27.0.1, found 27.1.0: "
        "install gunicorn==27.0.1 (requirements.txt) or set GUNICORN_WORKER_CLASS=gthread"
    ]


def test_settled_settings_are_plain_attributes_with_the_same_values():
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("keepalive", 7)
    cfg.set("threads", 3)
    expected = {name: getattr(cfg, name) for name in cfg.settings}
    computed = {name: getattr(cfg, name) for name in ("worker_class_str", "address", "is_ssl", "sendfile")}
    worker.settle_config(cfg)
    assert "keepalive" in vars(cfg) and "limit_request_line" in vars(cfg)
    assert {name: getattr(cfg, name) for name in cfg.settings} == expected
    assert {name: getattr(cfg, name) for name in computed} == computed  # properties still compute
    assert "worker_class" not in vars(cfg) and "env" not in vars(cfg)
