"""Starting real servers for integration tests: loopback only, bounded waits, always cleaned up."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str, *candidates: str) -> str:
    """The path of a system binary; skip locally, fail in CI (CI=true) when it is missing."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate)
        if path:
            return path
    reason = f"{name} is not installed (CI installs it through .ci/run)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def wait_http(url: str, timeout_s: float = 30.0, status: int = 200, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers ``status``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == status:
                return
            last = r.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s}s (last: {last})")


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Server:
    """A running server: ``url`` is its base URL (no trailing slash)."""

    url: str
    port: int
    proc: subprocess.Popen


@contextmanager
def gunicorn(
    artifacts_dir: Path | None = None, workers: int = 2, env: dict | None = None, log_path: Path | None = None
) -> Iterator[Server]:
    """Run ``gunicorn -c gunicorn.conf.py wsgi:app`` from the repository root on 127.0.0.1."""
    port = free_port()
    environ = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR")
    if artifacts_dir is not None:
        environ["TAGIFAI_ARTIFACTS_DIR"] = str(artifacts_dir)
    environ.update(env or {})
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/ready", proc=proc)
        # every worker loads its model on boot; give the others a moment to finish too
        wait_http(f"{base}/health/ready", proc=proc)
        yield Server(url=base, port=port, proc=proc)
    finally:
        stop(proc)
        if log_path:
            out.close()


# --- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """Debian keeps the server's programs under /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A scratch PostgreSQL cluster of its own on 127.0.0.1 (``initdb`` and ``pg_ctl`` in a temporary
    directory), stopped and removed by :func:`postgres`; ``stop()`` and ``start()`` for outages."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.directory = directory
        self.bin = bin_dir
        self.port = free_port()
        self.data = directory / "data"
        self.url = f"postgresql+psycopg://tagifai@127.0.0.1:{self.port}/tagifai"
        # initdb refuses to run as root: as root, the cluster belongs to the postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *args], timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")

    def create(self) -> None:
        if self._as:
            shutil.chown(self.directory, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "tagifai", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tagifai", "tagifai")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "30",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.directory} -F", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster; skipped locally, a failure in CI, without one. Its directory is not
    under pytest's (private to root, so the postgres user could not enter it)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        require_binary("initdb")  # skips or fails with the usual message
    directory = Path(tempfile.mkdtemp(prefix="tagifai-postgres-"))
    server = Postgres(directory, bin_dir)
    try:
        server.create()
        yield server
    finally:
        if server.running():
            try:
                server.stop("immediate")
            except (subprocess.SubprocessError, OSError):
                pass
        shutil.rmtree(directory, ignore_errors=True)
