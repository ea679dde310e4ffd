"""`make soak`: ten minutes of mixed traffic against Gunicorn (2 workers, recycling on).

Single texts, 100-text batches, bad input, unknown routes and reads, from keep-alive clients that
never resend (:mod:`benchmarks.client`). Every answer must be the one its request calls for (200, 400,
404, 415, 422): anything else, or a request lost, counts as unexpected and fails the run. Worker RSS
is sampled at the start (after a warm-up), middle and end: the median over ten seconds of the mean
over live workers must not grow past +10 %.
Not part of CI (it takes the whole ten minutes); the figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter

import psutil

from benchmarks.client import KeepAliveClient
from benchmarks.loadtest import ROOT, gunicorn

REPORTS = ROOT / "reports" / "soak"
WORDS = ("transformer", "image", "segmentation", "pipeline", "deployment", "monitoring", "language", "model",
         "detection", "feature", "store", "embedding", "tokenizer", "gan", "kubernetes", "training", "data")


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))


def _body(texts: list[str]) -> bytes:
    return json.dumps({"texts": [{"text": t} for t in texts]}).encode()


def next_request(rng: random.Random) -> tuple[str, str, str, bytes | None, dict, int]:
    """(kind, method, path, body, headers, expected status), drawn with the mix's weights."""
    roll = rng.random()
    if roll < 0.55:
        return "single", "POST", "/predict", _body([_text(rng)]), {}, 200
    if roll < 0.65:
        return "batch100", "POST", "/predict", _body([_text(rng) for _ in range(100)]), {}, 200
    if roll < 0.70:
        return "empty-list", "POST", "/predict", b'{"texts": []}', {}, 422
    if roll < 0.73:
        return "blank-text", "POST", "/predict", _body([" \t"]), {}, 422
    if roll < 0.76:
        return "bad-json", "POST", "/predict", b'{"texts": [', {}, 400
    if roll < 0.78:
        return "not-json", "POST", "/predict", b"texts=a", {"Content-Type": "text/plain"}, 415
    if roll < 0.88:
        return "unknown-route", "GET", f"/no/such/route/{rng.randint(0, 999)}", None, {}, 404
    if roll < 0.93:
        return "performance", "GET", "/performance?filter=overall", None, {}, 200
    return "args", "GET", "/args", None, {}, 200


class Traffic:
    """Client threads sending the mix until stopped; counts per kind and the unexpected answers."""

    def __init__(self, port: int, clients: int, seed: int) -> None:
        self.port, self.seed = port, seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = Counter()
        self.unexpected: list[dict] = []
        self.stale = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        client = KeepAliveClient("127.0.0.1", self.port)
        while not self.stop.is_set():
            kind, method, path, body, headers, expected = next_request(rng)
            try:
                outcome = client.request(method, path, body, headers)
                status, error = outcome.status, outcome.error
            except ConnectionError as exc:
                status, error = None, str(exc)
            with self.lock:
                self.sent[kind] += 1
                if status != expected:
                    self.unexpected.append({"kind": kind, "expected": expected, "status": status, "error": error,
                                            "at": time.monotonic()})
        client.close()
        with self.lock:
            self.stale += client.stale

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def worker_rss_mb(master_pid: int, min_age_s: float = 2.0) -> list[float]:
    """RSS of each live worker of the Gunicorn master that has served a while, in MB (one still
    loading its model after a recycle would read low)."""
    out = []
    for child in psutil.Process(master_pid).children():
        try:
            if time.time() - child.create_time() >= min_age_s:
                out.append(child.memory_info().rss / 1e6)
        except psutil.NoSuchProcess:
            pass
    return out


def sample_rss(master_pid: int, window_s: float = 10.0) -> list[float]:
    """Mean worker RSS (MB), sampled twice a second over ``window_s``: a recycle in the window
    changes single samples, not the median of them."""
    means = []
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        values = worker_rss_mb(master_pid)
        if values:
            means.append(statistics.fmean(values))
        time.sleep(0.5)
    return means


def gunicorn_master() -> int:
    """The Gunicorn master this process started (its children are the workers)."""
    for child in psutil.Process().children():
        if any("gunicorn" in part for part in child.cmdline()):
            return child.pid
    raise RuntimeError("no Gunicorn started by this process")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="Seconds of traffic (default 600).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent keep-alive clients (default 8).")
    parser.add_argument("--max-requests", type=int, default=20000,
                        help="Gunicorn max_requests: each worker is recycled after about this many (default 20000).")
    parser.add_argument("--warmup", type=float, default=30.0, help="Seconds of traffic before the first RSS sample.")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    REPORTS.mkdir(parents=True, exist_ok=True)
    env = {"GUNICORN_MAX_REQUESTS": str(args.max_requests),
           "GUNICORN_MAX_REQUESTS_JITTER": str(max(1, args.max_requests // 10))}
    with gunicorn(2, None, REPORTS / "gunicorn.log", env=env) as base:
        port = int(base.rsplit(":", 1)[1])
        master = gunicorn_master()
        traffic = Traffic(port, args.clients, args.seed)
        t0 = time.monotonic()
        traffic.start()
        samples: dict[str, list[float]] = {}
        window = min(10.0, args.duration / 10)
        marks = {"start": args.warmup, "middle": args.warmup + (args.duration - args.warmup - window) / 2,
                 "end": args.duration - window}
        for name, at in marks.items():
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            samples[name] = sample_rss(master, window)
            print(f"{time.monotonic() - t0:6.0f}s  {name:6}  mean worker RSS {statistics.median(samples[name]):.1f} MB"
                  f"  requests so far {sum(traffic.sent.values())}", flush=True)
        traffic.join()
        elapsed = time.monotonic() - t0
    recycled = sum(1 for line in (REPORTS / "gunicorn.log").read_text().splitlines() if "Autorestarting" in line)

    mean = {name: statistics.median(values) for name, values in samples.items()}
    growth = max(mean["middle"], mean["end"]) / mean["start"] - 1
    report = {
        "duration_s": round(elapsed, 1), "clients": args.clients, "workers": 2, "max_requests": args.max_requests,
        "requests": sum(traffic.sent.values()), "by_kind": dict(traffic.sent), "unexpected": len(traffic.unexpected),
        "unexpected_examples": traffic.unexpected[:20], "stale_keepalive_reconnects": traffic.stale,
        "workers_recycled": recycled,
        "mean_worker_rss_mb": {name: round(v, 1) for name, v in mean.items()},
        "mean_worker_rss_mb_range": {name: [round(min(v), 1), round(max(v), 1)] for name, v in samples.items()},
        "rss_growth_pct": round(100 * growth, 1),
    }
    (REPORTS / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = report["unexpected"] == 0 and growth <= 0.10 and report["requests"] > 0
    print("soak", "PASSED" if ok else "FAILED", f"(report: {REPORTS / 'soak.json'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
