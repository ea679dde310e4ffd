"""The Gunicorn worker's response writer, keep-alive handling and version pin, without a server
(see tests/integration/test_worker_gunicorn.py for the worker under real Gunicorn)."""

from __future__ import annotations

import importlib
import os
import re
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import gunicorn
import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http.errors import ParseException
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


@pytest.fixture(params=[True, False], ids=["reading-without-waiting", "gthread-reading"])
def served(request):
    """A ThreadWorker as it is after the fork, minus the master and the thread pool, and one loopback
    connection to it: ``(worker, the connection as the worker holds it, the client's socket)``. Once
    reading as it does for plain HTTP/1, once as gthread reads (what it keeps for TLS and HTTP/2)."""
    cfg = Config()
    w = worker.ThreadWorker(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
    w._reads_in_loop = request.param
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


# --- requests read whole by the event loop, before a thread sees them ---------------------------

def _reader(max_body: int = 1 << 20, now: float = 0.0, **settings) -> worker.RequestReader:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return worker.RequestReader(worker.ReadLimits(cfg, max_body), ("127.0.0.1", 5000), cfg, now)


def _feed_bytewise(reader: worker.RequestReader, raw: bytes) -> list[int]:
    """Feed ``raw`` a byte at a time (at t = 1, 2, ...); the positions after which it was whole."""
    whole = []
    for i in range(len(raw)):
        reader.feed(raw[i:i + 1], float(i + 1))
        if reader.advance(float(i + 1)):
            whole.append(i)
    return whole


def test_a_request_arriving_a_byte_at_a_time_is_whole_at_its_last_byte_and_parsed_twice_at_most(monkeypatch):
    parses = []
    real = worker.Request
    monkeypatch.setattr(worker, "Request", lambda *a: parses.append(1) or real(*a))
    raw = b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Long: " + b"a" * 2000 + b"\r\n\r\nhello"
    reader = _reader()
    assert _feed_bytewise(reader, raw) == [len(raw) - 1]
    assert len(parses) == 2  # where the first line ended (a bad one is refused at once), and the head
    req = reader.take()
    assert (req.method, req.path, req.query) == ("POST", "/p", "q=1")
    assert req.body.read() == b"hello"


def test_a_chunked_body_is_whole_at_its_last_chunk_and_trailers():
    raw = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    reader = _reader()
    assert _feed_bytewise(reader, raw) == [len(raw) - 1]
    req = reader.take()
    assert req.body.read() == b"hello world" and req.trailers == [("X-TRAILER", "t")]


def test_pipelined_requests_are_taken_one_after_another_from_the_buffer():
    reader = _reader()
    reader.feed(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTT", 1.0)
    assert reader.advance(1.0)
    first = reader.take()
    assert first.path == "/1" and first.body.read() == b"abc"
    assert reader.has_bytes() and reader.advance(2.0) and reader.take().path == "/2"
    assert reader.has_bytes() and not reader.advance(3.0)  # the third is still arriving
    reader.feed(b"P/1.1\r\nHost: x\r\n\r\n", 4.0)
    assert reader.advance(4.0) and reader.take().path == "/3"
    assert not reader.has_bytes()


def test_an_unread_body_is_drained_from_memory_before_the_next_request():
    reader = _reader()
    reader.feed(b"POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
                b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert reader.advance(1.0)
    reader.take()  # the app never reads the body
    assert reader.parser.finish_body()  # from the buffer: the reader has no socket to read
    assert reader.advance(2.0) and reader.take().path == "/2"


@pytest.mark.parametrize("raw, error", [
    (b"NOT A REQUEST LINE\r\n", "InvalidRequestLine"),  # refused when its line ends, not at a deadline
    (b"GET / HTTP/1.1\nHost: x\n", "InvalidRequestLine"),  # a bare LF
    (b"GET /" + b"a" * 100, "LimitRequestLine"),  # a request line that never ends
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 400, "LimitRequestHeaders"),  # headers that never end
])
def test_a_head_gunicorn_refuses_is_refused_before_it_ends(raw, error):
    reader = _reader(limit_request_line=50, limit_request_fields=2, limit_request_field_size=100)
    reader.feed(raw, 1.0)
    with pytest.raises(ParseException) as caught:
        reader.advance(1.0)
    assert type(caught.value).__name__ == error


def test_a_declared_body_over_the_limit_goes_to_the_app_at_once_and_closes_the_connection():
    reader = _reader(max_body=100)
    reader.feed(b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\nab", 1.0)
    assert reader.advance(1.0) and reader.must_close
    req = reader.take()
    assert req.should_close()  # answered with Connection: close, the body never read
    assert not req._expected_100_continue and not reader.wants_continue()  # no 100 Continue either


def test_a_chunked_body_over_the_limit_is_refused():
    reader = _reader(max_body=10)
    reader.feed(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n", 1.0)
    with pytest.raises(worker.BodyTooLarge):
        reader.advance(1.0)


def test_a_client_expecting_100_continue_is_told_once_to_send_its_body():
    reader = _reader()
    reader.feed(b"POST /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 1.0)
    assert not reader.advance(1.0)
    assert reader.wants_continue() and not reader.wants_continue()
    reader.feed(b"ok", 2.0)
    assert reader.advance(2.0) and reader.take().body.read() == b"ok"


def test_the_headers_deadline_counts_from_the_start_and_the_bodys_from_its_last_byte():
    reader = _reader(now=100.0)  # accepted at 100
    assert reader.deadline(10, 30) == (110.0, "headers")
    reader.feed(b"POST /p HTTP/1.1\r\n", 105.0)
    assert not reader.advance(105.0) and reader.deadline(10, 30) == (110.0, "headers")  # progress does not extend it
    reader.feed(b"Host: x\r\nContent-Length: 9\r\n\r\n", 106.0)
    assert not reader.advance(106.0) and reader.deadline(10, 30) == (136.0, "body")
    reader.feed(b"abc", 120.0)
    assert not reader.advance(120.0) and reader.deadline(10, 30) == (150.0, "body")
    assert reader.held == 3


def _echo_request(environ, start_response):
    """Answers ``<path> <body length>``."""
    body = f"{environ['PATH_INFO']} {len(environ['wsgi.input'].read())}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def loop():
    """A ThreadWorker running its event loop in a thread, as after the fork but without a master or
    signals, with 2 threads and deadlines of 0.5 s: ``(worker, connect)``; ``connect()`` opens a
    client connection to it. Tests change its bounds on the instance."""
    cfg = Config()
    cfg.set("threads", 2)
    cfg.set("graceful_timeout", 2)
    w = worker.ThreadWorker(0, os.getppid(), [], None, 30, cfg, Logger(cfg))
    w.wsgi = _echo_request
    w.pid = os.getpid()  # the master sets it after the fork
    w.header_timeout = w.body_timeout = 0.5
    listener = socket.create_server(("127.0.0.1", 0))
    w.sockets = [listener]
    w.tpool = ThreadPoolExecutor(2)
    w.poller = selectors.DefaultSelector()
    w.method_queue.init()
    clients = []

    def connect() -> socket.socket:
        clients.append(socket.create_connection(listener.getsockname(), timeout=10))
        return clients[-1]

    running = threading.Thread(target=w.run, daemon=True)
    running.start()
    yield w, connect
    for client in clients:
        client.close()
    w.alive = False
    w.method_queue.defer(lambda: None)
    running.join(10)
    w.tmp.close()


def _post(path: str, body: bytes = b"", extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def _closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_connections_with_requests_still_arriving_hold_no_thread(loop):
    """Twice as many slow clients as threads, mid-headers and mid-body: a whole request is still
    answered at once (in gthread each would hold a thread until its client finished)."""
    w, connect = loop
    w.header_timeout = w.body_timeout = 60.0
    slow = [connect() for _ in range(4)] + [connect() for _ in range(4)]
    for sock in slow[:4]:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\n")
    for sock in slow[4:]:
        sock.sendall(_post("/slow", b"12345")[:-2])
    helpers.wait_until(lambda: sum(c.reader.held > 0 for c in w._incomplete) == 8, what="8 requests arriving")
    fast = connect()
    fast.sendall(_post("/fast", b"body") + _post("/fast", b"more"))  # pipelined
    assert [body for _, body in _read_responses(fast, 2)] == [b"/fast 4", b"/fast 4"]
    assert w._waiting == 0 and len(w._incomplete) == 8
    for sock in slow:
        sock.sendall(b"Content-Length: 0\r\n\r\n" if sock in slow[:4] else b"45")
    assert all(_read_responses(sock, 1)[0][1] == b"/slow " + (b"0" if sock in slow[:4] else b"5") for sock in slow)


def test_a_slow_head_is_answered_408_at_its_deadline_and_counted(loop):
    w, connect = loop
    sock = connect()
    started = time.monotonic()
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    while not readable.poll(100):  # a header line every 0.1 s: progress, but never the end
        sock.sendall(b"X-Drip: 1\r\n")
    answer = _closed(sock)
    assert time.monotonic() - started >= 0.5
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in answer
    assert w.slow_clients == {"headers": 1}


def test_a_stalled_body_is_answered_408_counted_from_its_last_byte(loop):
    w, connect = loop
    sock = connect()
    sock.sendall(_post("/predict", b"0123456789")[:-8])
    helpers.wait_until(lambda: any(c.reader.phase == worker.BODY for c in w._incomplete), what="the body phase")
    time.sleep(0.3)
    last = time.monotonic()
    sock.sendall(b"23")  # progress: the deadline moves
    answer = _closed(sock)
    assert time.monotonic() - last >= 0.5
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert w.slow_clients == {"body": 1}


def test_a_connection_that_never_speaks_is_closed_at_the_header_deadline_without_an_answer(loop):
    w, connect = loop
    started = time.monotonic()
    assert _closed(connect()) == b""
    assert time.monotonic() - started >= 0.5 and w.slow_clients == {"headers": 1}


def test_an_idle_kept_alive_connection_keeps_the_keepalive_limit(loop):
    """Idle longer than the header deadline (a silent connection opened after it is closed by it),
    it still carries the next request."""
    w, connect = loop
    kept = connect()
    kept.sendall(_post("/one"))
    assert _read_responses(kept, 1)[0][1] == b"/one 0"
    assert _closed(connect()) == b""  # opened later, closed at its header deadline
    kept.sendall(_post("/two"))
    assert _read_responses(kept, 1)[0][1] == b"/two 0"
    assert w.slow_clients == {"headers": 1}


def test_beyond_the_bound_the_oldest_incomplete_connection_is_closed(loop):
    w, connect = loop
    w.header_timeout = 60.0
    w.max_incomplete = 3
    first, *others = [connect() for _ in range(3)]
    for count, sock in enumerate((first, *others), 1):  # one after another: their age is their order
        sock.sendall(b"GET /h HTTP/1.1\r\n")
        helpers.wait_until(lambda: sum(c.reader.held > 0 for c in w._incomplete) == count, what="held")  # noqa: B023
    newest = connect()
    assert _closed(first) == b""  # the oldest goes
    assert w.slow_clients == {"evicted": 1}
    for sock in (*others, newest):
        sock.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n" if sock is newest else b"Host: x\r\n\r\n")
        assert _read_responses(sock, 1)[0][1] == b"/h 0"


def test_beyond_the_byte_bound_the_oldest_incomplete_connection_is_closed(loop):
    w, connect = loop
    w.header_timeout = 60.0
    w.max_incomplete_bytes = 1000
    old, new = connect(), connect()
    old.sendall(b"GET /h HTTP/1.1\r\nX-Big: " + b"a" * 600)
    helpers.wait_until(lambda: w._incomplete_bytes >= 600, what="the first 600 bytes held")
    new.sendall(b"GET /h HTTP/1.1\r\nX-Big: " + b"a" * 600)
    assert _closed(old) == b""
    assert w.slow_clients == {"evicted": 1}
    new.sendall(b"\r\nHost: x\r\n\r\n")
    assert _read_responses(new, 1)[0][1] == b"/h 0"
    helpers.wait_until(lambda: w._incomplete_bytes == 0, what="nothing held")


def test_a_request_in_pieces_a_chunked_body_and_100_continue_through_the_loop(loop):
    w, connect = loop
    sock = connect()
    raw = _post("/pieces", b"0123456789")
    for i in range(0, len(raw), 7):
        sock.sendall(raw[i:i + 7])
        time.sleep(0.01)
    assert _read_responses(sock, 1)[0][1] == b"/pieces 10"
    sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n")
    time.sleep(0.05)
    sock.sendall(b"0\r\n\r\n")
    assert _read_responses(sock, 1)[0][1] == b"/chunked 4"
    sock.sendall(_post("/continue", b"abc", "Expect: 100-continue\r\n")[:-3])
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"abc")
    assert _read_responses(sock, 1)[0][1] == b"/continue 3"
    assert w.slow_clients == {}


def test_bad_requests_and_connection_close_are_answered_then_closed(loop):
    w, connect = loop
    bad = connect()
    bad.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    assert _closed(bad).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    closing = connect()
    closing.sendall(_post("/last", b"", "Connection: close\r\n"))
    answer = _closed(closing)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"/last 0")
    helpers.wait_until(lambda: w.nr_conns == 0, what="both connections closed in the worker")


@pytest.mark.parametrize("served", [True], indirect=True, ids=["reading-without-waiting"])
def test_a_next_request_begun_but_not_whole_goes_back_to_the_loop_as_incomplete(served):
    w, conn, client = served
    client.sendall(_request("/one") + b"GET /two HTTP/1.1\r\nHo")
    assert _handle(w, conn) is True and w.nr == 1  # answered the first; the thread did not wait for the second
    assert not conn.reader.idle and conn.reader.deadline(10, 30)[1] == "headers"  # the loop holds it as incomplete
    assert _read_responses(client, 1)[0][1] == b"/one"


@pytest.mark.parametrize("setting, value", [("certfile", "/run/secrets/tls.pem"), ("http_protocols", "h2,h1"),
                                            ("protocol", "uwsgi")])
def test_tls_http2_and_uwsgi_keep_gthreads_reading(setting, value):
    """Only plain HTTP/1 is read without waiting; the service serves nothing else (nginx or the load
    balancer in front of it terminates TLS)."""
    cfg = Config()
    assert _worker_for(cfg)._reads_in_loop
    cfg.set(setting, value)
    assert not _worker_for(cfg)._reads_in_loop


def _worker_for(cfg) -> worker.ThreadWorker:
    w = worker.ThreadWorker(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
    w.tmp.close()
    return w


def test_a_worker_starts_without_the_libraries_it_does_not_use(artifacts_dir, tmp_path):
    """On an up-to-date store a worker checks the schema without Alembic, and without identity-provider
    tokens configured it never loads PyJWT: each would stay in every worker's memory, and in every
    full pass of its garbage collector, for nothing."""
    env = {**os.environ, "TAGIFAI_ARTIFACTS_DIR": str(artifacts_dir), "TAGIFAI_STORE_UPGRADE": "false",
           "TAGIFAI_DATABASE_URL": helpers.private_store(artifacts_dir, tmp_path),
           "TAGIFAI_API_KEYS_FILE": str(tmp_path / "none.json"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "TAGIFAI_LOG_LEVEL": "ERROR"}
    code = ("import sys; from tagifai_api import create_app; create_app(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'jwt', 'cryptography'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
