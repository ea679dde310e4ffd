"""The Gunicorn worker's response writer and version pin, without a server (see
tests/integration/test_worker_gunicorn.py for the worker under real Gunicorn)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import SimpleNamespace

import gunicorn
import pytest

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
