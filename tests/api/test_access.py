"""The access-line writer: whole lines, in order, in pipe-atomic chunks, never held for long."""

import json
import os
import select
import threading
import time

import pytest

from tagifai_api.web.access import LineWriter


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def read_all(fd: int) -> list[bytes]:
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        data = os.read(fd, 1 << 20)
        if not data:
            break
        chunks.append(data)
    return chunks


class RecordingWriter(LineWriter):
    """Keeps each write's bytes: a pipe's reader cannot tell where one write ended."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.writes: list[bytes] = []

    def _write(self, data: bytes) -> None:
        self.writes.append(data)
        super()._write(data)


def test_lines_come_out_whole_in_order_and_in_atomic_chunks(pipe):
    r, w = pipe
    writer = RecordingWriter(w, interval_s=3600)
    # 30 kB in all: several PIPE_BUF chunks, less than the pipe holds unread
    lines = [f'{{"n":{i},"pad":"{"x" * (i % 200)}"}}\n'.encode() for i in range(250)]
    for line in lines:
        writer.write(line)
    writer.flush()
    assert b"".join(read_all(r)) == b"".join(lines)
    assert len(writer.writes) > 1
    assert all(chunk.endswith(b"\n") and len(chunk) <= select.PIPE_BUF for chunk in writer.writes)


def wait_for_bytes(fd: int, expected: int, timeout_s: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        got += b"".join(read_all(fd))
        time.sleep(0.01)
    return got


class CountingEvent(threading.Event):
    """The writer thread's wake-up, counting the times it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


def test_a_full_batch_wakes_the_writer_at_once(pipe):
    r, w = pipe
    writer = LineWriter(w, interval_s=3600, batch_bytes=100)
    writer._wake = wake = CountingEvent()  # before the first line starts the thread that waits on it
    writer.write(b"a" * 60 + b"\n")
    # not a full batch yet: the thread, waiting out its hour, was not woken, so it cannot write
    assert wake.sets == 0 and read_all(r) == []
    writer.write(b"b" * 60 + b"\n")
    assert wake.sets == 1
    assert wait_for_bytes(r, 122) == b"a" * 60 + b"\n" + b"b" * 60 + b"\n"


def test_a_stalled_stdout_never_blocks_a_request_and_drops_are_reported(pipe):
    r, w = pipe
    os.set_blocking(w, False)
    filler = 0
    try:
        while True:  # fill the pipe: its reader has stalled
            filler += os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    writer = LineWriter(w, interval_s=0.01, max_pending=2_000)
    done = threading.Event()

    def requests_logging():
        for i in range(1000):
            writer.write(f'{{"n":{i}}}\n'.encode())
        done.set()

    threading.Thread(target=requests_logging, daemon=True).start()
    assert done.wait(10), "a request blocked on a stalled stdout"
    assert writer.dropped > 0
    got = b""
    deadline = time.monotonic() + 10
    while b"access lines dropped" not in got and time.monotonic() < deadline:  # the reader resumes
        got += b"".join(read_all(r))
        time.sleep(0.01)
    lines = got[filler:].splitlines()
    assert lines[0] == b'{"n":0}'
    assert json.loads(lines[-1])["level"] == "WARNING"


def test_lines_are_flushed_by_the_background_thread(pipe):
    r, w = pipe
    writer = LineWriter(w, interval_s=0.01)
    writer.write(b"late line\n")
    deadline = time.monotonic() + 10
    got = b""
    while not got and time.monotonic() < deadline:
        got = b"".join(read_all(r))
        time.sleep(0.01)
    assert got == b"late line\n"


def test_request_ids_are_unique_across_threads_and_a_fork():
    import threading

    from tagifai_api.web.access import RequestIds

    ids = RequestIds()
    seen: list[str] = []

    def take():
        seen.extend(ids.next() for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 16000
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's ids must differ from the parent's
        os.write(w, ids.next().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode()
    os.close(r)
    os.close(w)
    assert child not in seen and child[:16] != seen[0][:16]
