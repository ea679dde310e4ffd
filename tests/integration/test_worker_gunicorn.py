"""The service's Gunicorn worker class (tagifai_api/server/worker.py) under real Gunicorn, over raw sockets:
pipelined and kept-alive requests, ``Connection: close``, large and chunked bodies, files, HEAD,
Gunicorn's own error answers, connections spread over the workers, recycling and a graceful stop."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import requests
from swagger_ui_bundle import swagger_ui_path

from tests.helpers import gunicorn

pytestmark = pytest.mark.integration


def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    extra = {"Content-Type": "application/json", "Content-Length": str(len(body))} if method == "POST" else {}
    extra.update(headers or {})
    lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _predict(texts: list[str], request_id: str, headers: dict | None = None) -> bytes:
    body = json.dumps({"texts": [{"text": t} for t in texts]}).encode()
    return _request("POST", "/predict", body, {"X-Request-ID": request_id, **(headers or {})})


class Reader:
    """Reads HTTP/1.1 responses one after another off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-response: {self.buf[:200]!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        if head_only:
            return int(status_line.split()[1]), headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    assert self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    assert self._fill()
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    return int(status_line.split()[1]), headers, body
        length = int(headers["content-length"])
        while len(self.buf) < length:
            assert self._fill(), "connection closed mid-body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """True when the server closed the connection (and sent nothing more)."""
        self.sock.settimeout(5)
        return not self.buf and self.sock.recv(1) == b""


@pytest.fixture(scope="module")
def server(artifacts_dir):
    with gunicorn(artifacts_dir, workers=1, env={"TAGIFAI_CACHE_SIZE": "0"}) as srv:
        yield srv


def _connect(server) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    return sock, Reader(sock)


def test_pipelined_requests_are_answered_in_order(server):
    sock, reader = _connect(server)
    with sock:
        sock.sendall(b"".join([_predict(["a vision model for images"], "p-1"), _request("GET", "/health/ready"),
                               _predict(["pytorch library", "mlops pipelines"], "p-2"), _request("GET", "/")]))
        answers = [reader.response() for _ in range(4)]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    first, third = json.loads(answers[0][2]), json.loads(answers[2][2])
    assert answers[0][1]["x-request-id"] == first["request-id"] == "p-1"
    assert answers[2][1]["x-request-id"] == third["request-id"] == "p-2"
    assert [p["input_text"] for p in third["data"]["predictions"]] == ["pytorch library", "mlops pipelines"]
    assert all(headers["connection"] == "keep-alive" for _, headers, _ in answers)


def test_a_kept_alive_connection_is_served_after_pauses(server):
    """Pauses longer than a thread lingers: the connection goes back to the main loop and is served again."""
    sock, reader = _connect(server)
    with sock:
        for i, pause in enumerate((0.0, 0.05, 0.3, 0.0)):
            time.sleep(pause)
            sock.sendall(_predict([f"text number {i}"], f"k-{i}"))
            status, headers, body = reader.response()
            assert status == 200 and headers["x-request-id"] == f"k-{i}"
            assert json.loads(body)["data"]["predictions"][0]["input_text"] == f"text number {i}"


def test_connection_close_is_honoured(server):
    sock, reader = _connect(server)
    with sock:
        sock.sendall(_predict(["close after this"], "c-1", {"Connection": "close"}))
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


def test_large_and_chunked_request_bodies(server):
    texts = [f"text {i}: " + "transformers for language " * 40 for i in range(100)]
    sock, reader = _connect(server)
    with sock:
        sock.sendall(_predict(texts, "big"))
        status, headers, body = reader.response()
        assert status == 200 and int(headers["content-length"]) == len(body) > 100_000
        assert [p["input_text"] for p in json.loads(body)["data"]["predictions"]] == texts

        payload = json.dumps({"texts": [{"text": t} for t in texts[:10]]}).encode()
        chunks = b"".join(b"%X\r\n%s\r\n" % (len(payload[i:i + 500]), payload[i:i + 500])
                          for i in range(0, len(payload), 500)) + b"0\r\n\r\n"
        sock.sendall(_request("POST", "/predict", b"", {"Content-Type": "application/json",
                                                         "Transfer-Encoding": "chunked"}).replace(
            b"Content-Length: 0\r\n", b"") + chunks)
        status, _, body = reader.response()
        assert status == 200 and len(json.loads(body)["data"]["predictions"]) == 10
        sock.sendall(_request("GET", "/health/ready"))  # the connection is still in step
        assert reader.response()[0] == 200


def test_files_and_head_requests_on_one_connection(server):
    css = (Path(swagger_ui_path) / "swagger-ui.css").read_bytes()
    sock, reader = _connect(server)
    with sock:
        sock.sendall(_request("GET", "/docs/static/swagger-ui.css"))
        status, headers, body = reader.response()
        assert status == 200 and body == css
        sock.sendall(_request("HEAD", "/docs/static/swagger-ui.css"))
        status, headers, _ = reader.response(head_only=True)
        assert status == 200 and int(headers["content-length"]) == len(css)
        sock.sendall(_request("GET", "/openapi.json"))
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["openapi"].startswith("3.")


def test_unparseable_request_gets_gunicorns_answer_in_json(server):
    sock, reader = _connect(server)
    with sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        status, headers, body = reader.response()
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["status-code"] == 400


def test_recycling_loses_no_request(artifacts_dir):
    """A worker recycled every 7 or 8 requests on kept-alive connections: every request is answered 200."""
    env = {"GUNICORN_MAX_REQUESTS": "7", "GUNICORN_MAX_REQUESTS_JITTER": "1", "TAGIFAI_CACHE_SIZE": "0"}
    with gunicorn(artifacts_dir, workers=1, env=env) as srv, requests.Session() as http:
        statuses = [http.post(f"{srv.url}/predict", json={"texts": [{"text": f"t{i}"}]}, timeout=30).status_code
                    for i in range(30)]
    assert statuses == [200] * 30


def test_a_graceful_stop_answers_a_kept_alive_connection_then_closes_it(artifacts_dir):
    """TERM while a connection is kept alive: its next request is still answered, with
    ``Connection: close``, and the server exits cleanly."""
    with gunicorn(artifacts_dir, workers=1) as srv:
        sock, reader = _connect(srv)
        with sock:
            sock.sendall(_predict(["before the stop"], "s-1"))
            status, headers, _ = reader.response()
            assert status == 200 and headers["connection"] == "keep-alive"
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            sock.sendall(_predict(["during the stop"], "s-2"))
            status, headers, _ = reader.response()
            assert status == 200 and headers["connection"] == "close"
            assert reader.closed()
        assert srv.proc.wait(30) == 0


def _wait_for_workers(log: Path, count: int, timeout_s: float = 60.0) -> None:
    """Until ``count`` workers have loaded their model (a booting worker cannot take connections)."""
    deadline = time.monotonic() + timeout_s
    while len(set(re.findall(r"loaded in pid (\d+)", log.read_text(errors="replace")))) < count:
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.1)
    time.sleep(0.3)


def test_a_burst_of_new_connections_is_spread_over_the_workers(artifacts_dir, tmp_path):
    """A client opening its pool at once (wrk, nginx's upstream keep-alives) gets both workers,
    not one worker with every connection and an idle core (Gunicorn's gthread: often 16 and 0)."""
    log = tmp_path / "gunicorn.log"
    with gunicorn(artifacts_dir, workers=2, log_path=log) as srv:
        _wait_for_workers(log, 2)
        workers = psutil.Process(srv.proc.pid).children()
        socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=15) for _ in range(16)]
        try:
            for sock in socks:
                sock.sendall(_request("GET", "/health/ready"))
            assert all(Reader(sock).response()[0] == 200 for sock in socks)
            ours = {sock.getsockname()[1] for sock in socks}
            per_worker = [sum(1 for c in w.net_connections("tcp") if c.raddr and c.raddr.port in ours)
                          for w in workers]
        finally:
            for sock in socks:
                sock.close()
    assert sum(per_worker) == 16 and min(per_worker) >= 4, per_worker  # gthread: 16/0, 14/2, 13/3
