"""The locked, atomic file write every piece of mutable state goes through."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from tagifai_api.store import files


def try_lock(path: Path, operation: int) -> bool:
    """Whether another open file could take ``operation`` on ``path`` now, without waiting."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_concurrent_read_modify_writes_lose_nothing(tmp_path):
    counter, lock = tmp_path / "counter", tmp_path / ".counter.lock"
    files.write_atomic(counter, "0")
    writers, rounds = 8, 25

    def add_one():
        for _ in range(rounds):
            with files.locked(lock):
                files.write_atomic(counter, str(int(counter.read_text()) + 1))

    threads = [threading.Thread(target=add_one) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert int(counter.read_text()) == writers * rounds
    assert files.leftovers(counter) == []


def test_a_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "state"
    payloads = [b"a" * 1_000_000, b"b" * 2_000_000, b"c"]
    files.write_atomic(path, payloads[0])
    stop = threading.Event()

    def write():
        for i in range(5_000):
            if stop.is_set():
                return
            files.write_atomic(path, payloads[i % len(payloads)])

    writer = threading.Thread(target=write)
    writer.start()
    seen, reads = set(), 0
    deadline = time.monotonic() + 20
    try:
        while (len(seen) < len(payloads) or reads < 200) and writer.is_alive() and time.monotonic() < deadline:
            body = path.read_bytes()
            assert body in payloads, (len(body), body[:1], body[-1:])
            seen.add(body[:1])
            reads += 1
    finally:
        stop.set()
        writer.join(30)
    assert seen == {b"a", b"b", b"c"}  # the reads did overlap every kind of write
    assert files.leftovers(path) == []


@pytest.mark.parametrize("fail", ["fsync", "replace", "interrupt"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch, fail):
    path = tmp_path / "DEFAULT"
    files.write_atomic(path, "v1\n")
    error = KeyboardInterrupt() if fail == "interrupt" else OSError(28, "No space left on device")

    def broken(*args):
        raise error

    monkeypatch.setattr(os, "replace" if fail == "replace" else "fsync", broken)
    with pytest.raises(type(error)):
        files.write_atomic(path, "v2\n")
    monkeypatch.undo()
    assert path.read_text() == "v1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DEFAULT"]


def test_a_write_into_a_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.write_atomic(tmp_path / "missing" / "file", "x")


def test_permissions_are_those_asked_for_whatever_the_umask(tmp_path):
    old = os.umask(0o277)
    try:
        files.write_atomic(tmp_path / "keys", b"{}", mode=0o600)
        files.write_atomic(tmp_path / "plain", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~0o277


def test_replacing_keeps_the_mode_asked_for_not_the_old_files(tmp_path):
    path = tmp_path / "keys"
    path.write_text("old")
    path.chmod(0o644)
    files.write_atomic(path, "new", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "new"


def test_leftovers_are_the_temporary_files_a_crash_left(tmp_path):
    path = tmp_path / "out.csv.progress"
    crashed = tmp_path / ".out.csv.progress.0123456789ab.tmp"
    crashed.write_text("{}")
    (tmp_path / ".other.0123456789ab.tmp").write_text("{}")
    assert files.leftovers(path) == [crashed]


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    lock = tmp_path / ".lock"
    with files.locked(lock, shared=True, mode=0o600):
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600
        assert try_lock(lock, fcntl.LOCK_SH)
        assert not try_lock(lock, fcntl.LOCK_EX)
    assert try_lock(lock, fcntl.LOCK_EX)
    assert lock.exists()  # kept: later holders wait on the same file


def test_an_exclusive_holder_excludes_everyone_until_it_leaves(tmp_path):
    lock = tmp_path / ".registry.lock"
    with files.locked(lock):
        assert not try_lock(lock, fcntl.LOCK_SH) and not try_lock(lock, fcntl.LOCK_EX)
    assert try_lock(lock, fcntl.LOCK_SH)


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    lock = tmp_path / ".lock"
    with pytest.raises(RuntimeError), files.locked(lock):
        raise RuntimeError("inside")
    assert try_lock(lock, fcntl.LOCK_EX)
