"""Faults under load, against real Gunicorn: reloads, added and removed workers, recycling, a killed
worker, and a stop, while keep-alive clients keep posting.

Clients never resend (:class:`benchmarks.client.KeepAliveClient`): a kept-alive connection found
closed before a request goes out is replaced, and anything that fails after that is a lost request.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import psutil
import pytest
import requests

from benchmarks.client import KeepAliveClient, Outcome
from tests.helpers import PREDICT_COUNT, gunicorn, scrape, value

pytestmark = pytest.mark.integration

CLIENTS = 24
MAX_REQUESTS = 1000  # with the jitter, each worker is recycled every few seconds under this load
KILL_WINDOW_S = 2.0  # a request lost to kill -9 fails as the worker dies, well within this


class Load:
    """``clients`` threads, each posting on its own keep-alive connection until stopped."""

    def __init__(self, port: int, clients: int, texts: int = 2, stop_on_refusal: bool = False) -> None:
        self.port, self.texts, self.stop_on_refusal = port, texts, stop_on_refusal
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.refused: list[float] = []
        self.clients = [KeepAliveClient("127.0.0.1", port) for _ in range(clients)]
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(c, i), daemon=True)
                        for i, c in enumerate(self.clients)]

    def _run(self, client: KeepAliveClient, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            text = f"Client {index} request {n}: transformers for text classification and image segmentation."
            body = json.dumps({"texts": [{"text": text}] * self.texts}).encode()
            try:
                outcome = client.request("POST", "/predict", body, {"X-Request-ID": f"fault-{index}-{n}"})
            except ConnectionError:
                with self.lock:
                    self.refused.append(time.monotonic())
                if self.stop_on_refusal:
                    return
                time.sleep(0.05)
                continue
            with self.lock:
                self.outcomes.append(outcome)
        client.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(40)

    def ok(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 200)


def workers(master: int) -> set[int]:
    return {p.pid for p in psutil.Process(master).children()}


def wait_workers(master: int, count: int, gone: set[int] = frozenset(), timeout_s: float = 30.0) -> set[int]:
    """Wait until the master has ``count`` workers, none of them in ``gone``, then let them load."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = workers(master)
        if len(current) == count and not current & gone:
            time.sleep(1.5)  # a new worker loads its model before it accepts
            return current
        time.sleep(0.1)
    raise TimeoutError(f"master {master} did not reach {count} workers (has {workers(master)})")


def connections_of(pid: int, port: int) -> int:
    """Client connections a worker holds on the service port."""
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def kill_busiest_worker(master: int, port: int) -> tuple[int, int, float]:
    """SIGKILL the worker holding most connections: (pid, its connections, when). It is stopped while
    its connections are counted, so it accepts none between the count and the kill (the other worker
    takes what arrives meanwhile). Retried when recycling replaces a worker between looking and killing."""
    for _ in range(100):
        try:
            held = {pid: connections_of(pid, port) for pid in workers(master)}
            victim = max(held, key=held.get)
            os.kill(victim, signal.SIGSTOP)
            connections = connections_of(victim, port)
            if not connections:  # both just recycled, the clients' connections not yet accepted
                os.kill(victim, signal.SIGCONT)
                raise ValueError("no connections held")
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            return victim, connections, killed_at
        except (psutil.NoSuchProcess, ProcessLookupError, ValueError):
            time.sleep(0.05)
    raise RuntimeError("no worker could be killed")


def test_reload_scale_recycle_and_kill_under_load(artifacts_dir, tmp_path):
    """HUP, TTIN, TTOU and max_requests lose nothing; kill -9 loses at most the killed worker's
    connections; /metrics counts what the clients received; the service is ready afterwards."""
    log = tmp_path / "gunicorn.log"
    env = {"GUNICORN_MAX_REQUESTS": str(MAX_REQUESTS), "GUNICORN_MAX_REQUESTS_JITTER": "200"}
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        master = server.proc.pid
        start = workers(master)
        with Load(server.port, CLIENTS) as load:
            time.sleep(2)
            os.kill(master, signal.SIGHUP)  # new workers with a fresh config, the old ones stop gracefully
            wait_workers(master, 2, gone=start)
            os.kill(master, signal.SIGTTIN)
            wait_workers(master, 3)
            os.kill(master, signal.SIGTTOU)
            wait_workers(master, 2)
            victim, victim_connections, killed_at = kill_busiest_worker(master, server.port)
            wait_workers(master, 2, gone={victim})
            time.sleep(1)
        counted = value(scrape(server.url), *PREDICT_COUNT)
        ready = requests.get(f"{server.url}/health/ready", timeout=5).status_code
        live = wait_workers(master, 2)  # a worker recycled just now is being replaced: wait for it

    lost = [o for o in load.outcomes if o.status is None]
    in_window = [o for o in lost if killed_at <= o.ended_at <= killed_at + KILL_WINDOW_S]
    outside = [o for o in lost if o not in in_window]
    others = [o for o in load.outcomes if o.status not in (None, 200)]
    recycled = log.read_text().count("Autorestarting worker")
    stale = sum(c.stale for c in load.clients)
    print(f"answered {load.ok()}, lost {len(lost)} (kill window {len(in_window)}, killed worker held "
          f"{victim_connections} connections), counted {counted:.0f}, recycled {recycled}, "
          f"stale keep-alive connections replaced {stale}, refused {len(load.refused)}")
    assert load.ok() > 1000
    assert recycled >= 2, "max_requests recycling did not happen during the run"
    assert not outside, [o.error for o in outside]
    assert 1 <= victim_connections and len(in_window) <= victim_connections
    assert not others, [(o.status, o.body[:200]) for o in others]
    assert not load.refused
    assert load.ok() <= counted <= load.ok() + len(in_window)
    assert ready == 200 and len(live) == 2


def test_term_answers_requests_in_flight_then_exits(artifacts_dir, tmp_path):
    """On SIGTERM every request already sent is answered, then the server exits within its graceful timeout."""
    graceful = 10
    env = {"GUNICORN_GRACEFUL_TIMEOUT": str(graceful)}
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=tmp_path / "gunicorn.log") as server:
        # 8 x 100 texts stay within one worker's queue (TAGIFAI_BATCH_QUEUE_SIZE, 1024 texts)
        with Load(server.port, 8, texts=100, stop_on_refusal=True) as load:
            time.sleep(2)
            term_at = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(graceful + 5)
            exited_after = time.monotonic() - term_at
            load.stop.set()

    before = [o for o in load.outcomes if o.sent_at < term_at]
    in_flight = [o for o in before if o.ended_at > term_at]
    print(f"in flight at TERM {len(in_flight)}, answered before it {len(before) - len(in_flight)}, "
          f"exit {code} after {exited_after:.2f}s")
    assert len(in_flight) >= 4  # the signal really landed with requests in progress
    assert all(o.status == 200 for o in before), [(o.status, o.error, o.body[:300]) for o in before if o.status != 200][:3]
    assert code == 0
    assert exited_after <= graceful


def test_client_replaces_a_closed_keepalive_connection_without_resending():
    """The fault tests' client: a connection the server closed while idle is replaced before sending."""
    import socketserver
    from http.server import BaseHTTPRequestHandler

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the stdlib's name
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = self.path == "/close-after"

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False

    with Server(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        client = KeepAliveClient("127.0.0.1", httpd.server_address[1], timeout_s=5)
        assert client.request("GET", "/a").status == 200
        # the server closes the connection after this answer without saying so (no Connection: close)
        assert client.request("GET", "/close-after").status == 200
        time.sleep(0.2)  # the server's FIN arrives
        assert client.request("GET", "/b").status == 200
        client.close()
        httpd.shutdown()
    assert seen == ["/a", "/close-after", "/b"]
    assert client.connects == 2 and client.stale == 1
