"""`make loadtest`: Locust, headless and time-bounded, against Gunicorn (started here) or --host.

Reports go to reports/locust/ (HTML and CSV). The exit status is non-zero when any request failed,
when nothing was sent at all, or when Locust itself failed, so the run can gate a release.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "locust"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s}s")


def _stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def gunicorn(workers: int, artifacts: str | None, log_path: Path, env: dict | None = None) -> Iterator[str]:
    """Gunicorn with the repository's config on a free loopback port; yields its base URL."""
    port = _free_port()
    overrides = env or {}
    env = {**os.environ, "PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers),
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if artifacts:
        env["TAGIFAI_ARTIFACTS_DIR"] = artifacts
    env.update(overrides)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(f"{base}/health/ready", proc, 60)
            yield base
        finally:
            _stop(proc)


def summary(stats_csv: Path) -> dict[str, float]:
    """The Aggregated row of Locust's *_stats.csv."""
    with stats_csv.open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    row = rows["Aggregated"]
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"] or 0),
        "p95_ms": float(row["95%"] or 0),
        "p99_ms": float(row["99%"] or 0),
    }


def run_locust(host: str, users: int, spawn_rate: float, run_time: int, reports: Path) -> tuple[int, dict]:
    prefix = reports / "loadtest"
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless", "--host", host,
           "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", f"{run_time}s",
           "--stop-timeout", "5", "--html", f"{prefix}.html", "--csv", str(prefix), "--only-summary",
           "--loglevel", "WARNING"]
    print("$", " ".join(cmd), flush=True)
    # bounded: Locust stops itself after run_time; the margin covers start-up and the stop timeout
    done = subprocess.run(cmd, cwd=ROOT, timeout=run_time + 60)
    return done.returncode, summary(Path(f"{prefix}_stats.csv"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="Base URL of a running service; by default Gunicorn is started here.")
    parser.add_argument("--users", type=int, default=20, help="Concurrent Locust users (default 20).")
    parser.add_argument("--spawn-rate", type=float, default=5, help="Users started per second (default 5).")
    parser.add_argument("--run-time", type=int, default=30, help="Seconds of load (default 30).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="Gunicorn workers when started here (default: one per core).")
    parser.add_argument("--artifacts", help="Model artifacts for the Gunicorn started here (TAGIFAI_ARTIFACTS_DIR).")
    parser.add_argument("--reports", type=Path, default=REPORTS, help=f"Report folder (default {REPORTS}).")
    args = parser.parse_args(argv)
    args.reports.mkdir(parents=True, exist_ok=True)

    if args.host:
        code, stats = run_locust(args.host.rstrip("/"), args.users, args.spawn_rate, args.run_time, args.reports)
    else:
        with gunicorn(args.workers, args.artifacts, args.reports / "gunicorn.log") as host:
            code, stats = run_locust(host, args.users, args.spawn_rate, args.run_time, args.reports)

    print(f"{stats['requests']} requests, {stats['failures']} failed, {stats['rps']:.1f} req/s, "
          f"p50 {stats['p50_ms']:.0f} ms, p95 {stats['p95_ms']:.0f} ms, p99 {stats['p99_ms']:.0f} ms")
    print(f"reports: {args.reports}/loadtest.html and loadtest_*.csv")
    if stats["failures"] or not stats["requests"]:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
