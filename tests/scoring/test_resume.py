"""Interrupted runs: kill -9 and Ctrl-C leave committed, resumable output, and a resumed run's file
equals an uninterrupted run's byte for byte."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env, command, repeated

ARGS = ("--workers", "2", "--chunk-size", "50", "--quiet")


def committed_rows(progress: Path) -> int:
    try:
        return json.loads(progress.read_text())["committed"]["rows"]
    except (OSError, ValueError, KeyError):
        return 0


def start_and_feed(artifacts_dir: Path, data: bytes, out: Path,
                   preexec_fn: Callable[[], None] | None = None) -> tuple[subprocess.Popen, int]:
    """Score standard input fed slowly, in its own process group (as a terminal's job is), until
    some rows are committed; never more than half of ``data`` is sent, so the run cannot end.
    Returns the process and how many bytes of ``data`` it was sent."""
    proc = subprocess.Popen(command(artifacts_dir, "-", "--format", "csv", "-o", out, *ARGS), cwd=ROOT,
                            env={**os.environ, **cli_env(artifacts_dir)}, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=preexec_fn)
    progress = out.with_name(out.name + ".progress")
    sent, step = 0, 4096
    deadline = time.monotonic() + 60
    while committed_rows(progress) == 0:
        assert time.monotonic() < deadline, "no rows committed in 60 s"
        assert proc.poll() is None, proc.stderr.read()
        if sent + step <= len(data) // 2:
            proc.stdin.write(data[sent:sent + step])
            proc.stdin.flush()
            sent += step
        time.sleep(0.02)
    return proc, sent


def wait_group_gone(pgid: int) -> None:
    """Every process of the group (the workers too) has exited."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("worker processes outlived the scorer")


@pytest.fixture
def data(dataset_csv) -> bytes:
    return repeated(dataset_csv, 4)


@pytest.fixture
def reference(score, data, tmp_path):
    """The output of an uninterrupted run, for a given output name."""

    def run(name: str) -> bytes:
        src = tmp_path / "in.csv"
        src.write_bytes(data)
        out = tmp_path / f"reference-{name}"
        proc = score(src, "-o", out, *ARGS)
        assert proc.returncode == 0, proc.stderr
        return out.read_bytes()

    return run


def test_resume_after_kill_9_is_byte_identical(artifacts_dir, score, data, reference, tmp_path):
    out = tmp_path / "out.csv"
    proc, _ = start_and_feed(artifacts_dir, data, out)
    os.killpg(proc.pid, signal.SIGKILL)  # the scorer and its workers, as a power loss would
    proc.wait(timeout=10)
    proc.stdin.close()
    proc.stderr.close()
    wait_group_gone(proc.pid)
    progress = json.loads(out.with_name("out.csv.progress").read_text())["committed"]
    assert 0 < progress["rows"] < 4 * 764
    with open(out, "ab") as fh:  # a chunk cut short by the crash
        fh.write(b"1234,computer-vi")
    resumed = score("-", "--format", "csv", "-o", out, *ARGS, "--resume", input=data)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == reference("out.csv")
    assert not out.with_name("out.csv.progress").exists()


def test_workers_die_with_a_killed_scorer(artifacts_dir, data, tmp_path):
    """kill -9 of the main process alone: its workers do not linger."""
    proc, _ = start_and_feed(artifacts_dir, data, tmp_path / "out.csv")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdin.close()
    proc.stderr.close()
    wait_group_gone(proc.pid)


def test_ctrl_c_stops_cleanly_and_resumes_byte_identical_gzip(artifacts_dir, score, data, reference, tmp_path):
    out = tmp_path / "out.csv.gz"
    proc, _ = start_and_feed(artifacts_dir, data, out)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    assert proc.wait(timeout=30) == 130
    proc.stdin.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    wait_group_gone(proc.pid)
    assert stderr.startswith("error: interrupted (SIGINT): ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    rows = committed_rows(tmp_path / "out.csv.gz.progress")
    assert f"{rows:,} rows committed" in stderr

    changed = score("-", "--format", "csv", "-o", out, *ARGS, "--resume", "--batch-size", "7", input=data)
    assert changed.returncode == 2
    assert changed.stderr.startswith("error: cannot resume: batch_size differ"), changed.stderr
    refused = score("-", "--format", "csv", "-o", out, *ARGS, input=data)
    assert refused.returncode == 2 and "use --resume" in refused.stderr

    resumed = score("-", "--format", "csv", "-o", out, *ARGS[:-1], "--resume", input=data)  # not --quiet
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {rows:,}" in resumed.stderr
    assert out.read_bytes() == reference("out.csv.gz")


def test_a_full_disk_stops_with_one_line_and_resumes_byte_identical(artifacts_dir, score, data, reference, tmp_path):
    """Writes that fail (here: a file-size limit, as a full disk would) stop the run with the
    committed rows kept; a resumed run skips exactly those and finishes the same file."""
    out = tmp_path / "out.csv"
    # bytes: more than the output of the half of the input sent before the first commit (about
    # 235 kB), less than the whole output (about 470 kB)
    limit = 350_000

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc, sent = start_and_feed(artifacts_dir, data, out, preexec_fn=small_disk)
    _, stderr = proc.communicate(data[sent:], timeout=120)  # the rest at once: the disk fills
    stderr = stderr.decode()
    wait_group_gone(proc.pid)
    assert proc.returncode == 1, stderr
    assert stderr.startswith(f"error: cannot write {out}: File too large; ") and stderr.count("\n") == 1, stderr
    assert "run the same command with --resume" in stderr and "Traceback" not in stderr
    committed = int(re.search(r"; ([\d,]+) rows are committed", stderr).group(1).replace(",", ""))
    assert committed == committed_rows(out.with_name("out.csv.progress"))
    assert 50 <= committed < 4 * 764  # at least one chunk (--chunk-size 50) went in before the disk filled
    resumed = score("-", "--format", "csv", "-o", out, *ARGS[:-1], "--resume", input=data)  # not --quiet
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after {committed:,}" in resumed.stderr
    assert out.read_bytes() == reference("out.csv")
