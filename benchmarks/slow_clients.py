"""Slow clients against the service: connections that send their headers, or their body, a little at a
time while normal clients post single-text /predict (README, Performance, "Faults and soak").

    python -m benchmarks.slow_clients                     # this tree: without, then with the attack
    python -m benchmarks.slow_clients --baseline main~1   # then the service of that revision, the same way

Each side serves 2 workers on loopback with `make serve`'s settings (the deadlines at their defaults,
10 s for headers and 30 s for a stalled body, unless ``--header-timeout``/``--body-timeout`` say
otherwise). 16 normal clients, each on its own kept-alive connection, post one text at a time, first
for ``--seconds`` alone, then for as long again while 64 slow-header connections send one header
line a second (a connection the server closes is replaced, as an attacker would) and 16 slow-body
connections send 3 bytes of a 100,000-byte body a second. Then the attack stops sending and waits,
its connections still open, for the server to close them. Normal clients give up on an answer after
10 s. The report says, for each side: the normal clients' answers (how many, how many were not 200,
p50 and p99) with and without the attack, and for the slow connections how many the server closed,
how long after their deadline (headers: from the connection; body: from its last byte), and with
what answer. ``tests/integration/test_slow_clients.py`` runs the same attack, shorter, with short
deadlines.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.client import KeepAliveClient, Outcome

HEADERS, BODY = "headers", "body"
#: The slow-body requests' declared length: never reached while dripping.
BODY_LENGTH = 100_000
#: A slow connection closed this long after its deadline still counts as closed by it.
SLACK_S = 1.0


@dataclass(eq=False)
class SlowConnection:
    """One slow connection: when it opened, last sent a byte, and was closed by the server (None: not),
    and the status line's code of what the server sent it, if anything."""

    kind: str
    opened_at: float
    last_sent_at: float
    closed_at: float | None = None
    status: int | None = None
    sock: socket.socket | None = field(default=None, repr=False)
    received: bytes = field(default=b"", repr=False)

    def late_s(self, header_timeout: float, body_timeout: float) -> float | None:
        """How long after its deadline the server closed it (negative: before)."""
        if self.closed_at is None:
            return None
        if self.kind == HEADERS:
            return self.closed_at - (self.opened_at + header_timeout)
        return self.closed_at - (self.last_sent_at + body_timeout)


class Attack(threading.Thread):
    """``headers`` slow-header and ``body`` slow-body connections to ``port``, all driven by this one
    thread: every ``interval_s`` each slow-header connection sends one more header line and each
    slow-body one 3 more bytes, for ``drip_s``; a slow-header connection the server closes is replaced
    while dripping. Then nothing more is sent, and the thread waits up to ``wait_s`` for the server to
    close what is left. ``started`` is set once every connection is open."""

    def __init__(self, port: int, headers: int = 64, body: int = 16, drip_s: float = 30.0,
                 interval_s: float = 1.0, wait_s: float = 35.0) -> None:
        super().__init__(daemon=True)
        self.port, self.counts = port, {HEADERS: headers, BODY: body}
        self.drip_s, self.interval_s, self.wait_s = drip_s, interval_s, wait_s
        self.connections: list[SlowConnection] = []
        self.started = threading.Event()
        self.dripping_until = 0.0
        self._selector = selectors.DefaultSelector()
        self._next_send: dict[SlowConnection, float] = {}

    def _open(self, kind: str, now: float) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if kind == HEADERS:
            first = b"POST /predict HTTP/1.1\r\nHost: attack\r\n"
        else:
            first = (b"POST /predict HTTP/1.1\r\nHost: attack\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n{\"texts\": [" % BODY_LENGTH)
        sock.sendall(first)
        sock.setblocking(False)
        conn = SlowConnection(kind, now, time.monotonic(), sock=sock)
        self.connections.append(conn)
        self._selector.register(sock, selectors.EVENT_READ, conn)
        # spread over the interval, so the drips do not all land at once
        self._next_send[conn] = now + self.interval_s * (0.5 + (len(self.connections) % 10) / 10)

    def _closed(self, conn: SlowConnection, now: float) -> None:
        if conn.closed_at is None:
            conn.closed_at = now
        self._selector.unregister(conn.sock)
        self._next_send.pop(conn, None)
        conn.sock.close()
        if conn.kind == HEADERS and now < self.dripping_until:
            self._open(HEADERS, now)

    def _read(self, conn: SlowConnection, now: float) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(conn, now)
            return
        conn.received += data
        if conn.status is None and b"\r\n" in conn.received:
            parts = conn.received.split(b" ", 2)
            conn.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1

    def _drip(self, conn: SlowConnection, now: float) -> None:
        line = b"X-Drip-%d: 1\r\n" % int(now * 1000) if conn.kind == HEADERS else b"   "
        try:
            conn.sock.send(line)
            conn.last_sent_at = time.monotonic()
        except BlockingIOError:
            pass
        except OSError:
            self._closed(conn, now)
            return
        self._next_send[conn] = now + self.interval_s

    def run(self) -> None:
        start = time.monotonic()
        self.dripping_until = start + self.drip_s
        for kind, count in self.counts.items():
            for _ in range(count):
                self._open(kind, time.monotonic())
        self.started.set()
        end = self.dripping_until + self.wait_s
        while True:
            now = time.monotonic()
            if now >= end or (now >= self.dripping_until and not self._selector.get_map()):
                break
            dripping = now < self.dripping_until
            soonest = min(self._next_send.values(), default=now + 0.1) if dripping else now + 0.1
            for key, _ in self._selector.select(max(0.0, min(soonest - now, 0.1))):
                self._read(key.data, time.monotonic())
            now = time.monotonic()
            if now < self.dripping_until:
                for conn, when in list(self._next_send.items()):
                    if when <= now and conn.closed_at is None:
                        self._drip(conn, now)
        for key in list(self._selector.get_map().values()):  # never closed by the server
            key.fileobj.close()
        self._selector.close()

    def figures(self, header_timeout: float, body_timeout: float) -> dict:
        out = {}
        for kind in (HEADERS, BODY):
            conns = [c for c in self.connections if c.kind == kind]
            late = [c.late_s(header_timeout, body_timeout) for c in conns if c.closed_at is not None]
            statuses: dict[str, int] = {}
            for c in conns:
                if c.closed_at is not None:
                    key = str(c.status) if c.status is not None else "closed without an answer"
                    statuses[key] = statuses.get(key, 0) + 1
            out[kind] = {
                "connections": len(conns),
                "closed_by_server": len(late),
                "closed_within_deadline_plus_1s": sum(1 for x in late if -0.05 <= x <= SLACK_S),
                "closed_before_deadline": sum(1 for x in late if x < -0.05),
                "not_closed": len(conns) - len(late),
                "answers": statuses,
                "late_s_min": round(min(late), 3) if late else None,
                "late_s_max": round(max(late), 3) if late else None,
            }
        return out


class NormalClients:
    """``clients`` threads, each posting one text at a time on its own kept-alive connection, until
    stopped; an answer not there after ``timeout_s`` is a failure (status None)."""

    def __init__(self, port: int, clients: int = 16, timeout_s: float = 10.0) -> None:
        self.port, self.timeout_s = port, timeout_s
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        client = KeepAliveClient("127.0.0.1", self.port, timeout_s=self.timeout_s)
        n = 0
        while not self.stop.is_set():
            n += 1
            body = json.dumps({"texts": [{"text": f"client {index} request {n}: transformers for text"}]}).encode()
            try:
                outcome = client.request("POST", "/predict", body)
            except ConnectionError as exc:
                outcome = Outcome(None, time.monotonic(), time.monotonic(), error=str(exc))
                time.sleep(0.05)
            with self._lock:
                self.outcomes.append(outcome)
        client.close()

    def run_for(self, seconds: float) -> list[Outcome]:
        for t in self._threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)
        return self.outcomes


def latency_figures(outcomes: list[Outcome]) -> dict:
    ms = sorted((o.ended_at - o.sent_at) * 1000 for o in outcomes if o.status == 200)
    statuses: dict[str, int] = {}
    for o in outcomes:
        if o.status != 200:
            key = str(o.status) if o.status is not None else "no answer"
            statuses[key] = statuses.get(key, 0) + 1

    def pct(q: float) -> float | None:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 2) if ms else None

    return {"requests": len(outcomes), "ok": len(ms), "not_ok": statuses, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": round(ms[-1], 2) if ms else None}


def measure(port: int, seconds: float, header_timeout: float, body_timeout: float, headers: int = 64,
            body: int = 16, clients: int = 16, interval_s: float = 1.0) -> dict:
    """Normal clients alone for ``seconds``, then with the attack for as long; then the attack's end."""
    quiet = latency_figures(NormalClients(port, clients).run_for(seconds))
    attack = Attack(port, headers, body, drip_s=seconds + 1.0, interval_s=interval_s,
                    wait_s=max(header_timeout, body_timeout) + 2 * SLACK_S)
    attack.start()
    attack.started.wait(30)
    under = latency_figures(NormalClients(port, clients).run_for(seconds))
    attack.join(attack.drip_s + attack.wait_s + 30)
    result = {"without_attack": quiet, "with_attack": under, "slow": attack.figures(header_timeout, body_timeout)}
    if quiet["p99_ms"] and under["p99_ms"]:
        result["p99_ratio"] = round(under["p99_ms"] / quiet["p99_ms"], 2)
    return result


def _table(sides: dict) -> str:
    lines = []
    for name, side in sides.items():
        lines.append(f"{name}:")
        for run in ("without_attack", "with_attack"):
            f = side[run]
            lines.append(f"  normal clients {run.replace('_', ' ')}: {f['requests']} requests, {f['ok']} answered 200, "
                         f"others {f['not_ok'] or 'none'}, p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms")
        if "p99_ratio" in side:
            lines.append(f"  p99 with / without the attack: {side['p99_ratio']}x")
        for kind, f in side["slow"].items():
            lines.append(f"  slow-{kind} connections: {f['connections']}, closed by the server {f['closed_by_server']} "
                         f"({f['closed_within_deadline_plus_1s']} within 1 s after their deadline, "
                         f"{f['closed_before_deadline']} before it; {f['late_s_min']}..{f['late_s_max']} s after it), "
                         f"not closed {f['not_closed']}; answers {f['answers']}")
    return "\n".join(lines)


def main() -> None:
    from benchmarks.run import REPORTS, ROOT, SERVICE, export_revision, serve
    from tagifai_api import settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="of normal load, alone and under attack")
    parser.add_argument("--header-timeout", type=int, default=10)
    parser.add_argument("--body-timeout", type=int, default=30)
    parser.add_argument("--baseline", metavar="REV", help="also measure the service of this git revision")
    parser.add_argument("--artifacts", type=Path, default=Path(settings.DEFAULTS["ARTIFACTS_DIR"]))
    opts = parser.parse_args()
    started = time.time()
    env = {"GUNICORN_HEADER_TIMEOUT": str(opts.header_timeout), "GUNICORN_BODY_TIMEOUT": str(opts.body_timeout)}
    result = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": opts.seconds,
              "header_timeout": opts.header_timeout, "body_timeout": opts.body_timeout,
              "load_average_before": [round(x, 2) for x in os.getloadavg()], "sides": {}}
    with tempfile.TemporaryDirectory(prefix="tagifai-slow-") as tmp:
        trees = {"current": ROOT}
        if opts.baseline:
            trees["baseline"] = Path(tmp) / "baseline"
            result["baseline"] = {"rev": opts.baseline, "commit": export_revision(opts.baseline, trees["baseline"])}
        for name, tree in trees.items():
            print(f"{name}: serving {tree}", file=sys.stderr, flush=True)
            with serve(SERVICE, opts.artifacts, Path(tmp), extra_env=env, cwd=tree) as server:
                result["sides"][name] = measure(server.port, opts.seconds, opts.header_timeout, opts.body_timeout)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    REPORTS.mkdir(parents=True, exist_ok=True)
    out = REPORTS / f"slow-clients-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(result["sides"]))
    print(f"\nload average before {result['load_average_before']}, after {result['load_average_after']}; "
          f"{round(time.time() - started)} s; written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
