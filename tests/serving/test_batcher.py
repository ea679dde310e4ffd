"""Micro-batcher behaviour with a fake model: ordering, limits, window, overload, failures, fork."""

import os
import threading

import pytest

from tagifai_api.serving.batcher import BatchFailedError, DeadlineError, MicroBatcher, QueueFullError
from tests.helpers import wait_until


class FakeModel:
    """Records each call; optionally blocks until released, or fails on a poisoned item."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if "boom" in items:
            raise RuntimeError("model failure")
        if "exit" in items:
            raise SystemExit("a library calling exit()")
        return [f"r:{x}" for x in items]


@pytest.fixture
def make_batcher():
    made = []

    def factory(model, **kw):
        b = MicroBatcher(model, **kw)
        made.append(b)
        return b

    yield factory
    for b in made:
        b.close()


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run ``fn(*args)`` in a thread; the dict gets its ``result`` or ``error``."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _submit_in_threads(batcher, jobs, timeout_s=5.0):
    results, errors = {}, {}

    def run(key, items):
        try:
            results[key] = batcher.submit(items, timeout_s)
        except Exception as exc:  # noqa: BLE001
            errors[key] = exc

    threads = [threading.Thread(target=run, args=(k, v)) for k, v in jobs.items()]
    for t in threads:
        t.start()
    return threads, results, errors


def test_lone_request_runs_at_once(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_wait_s=3600.0)  # a window that applied would hold it for an hour
    t, out = in_thread(b.submit, ["a", "b"], 3600.0)
    t.join(30)
    assert out == {"result": ["r:a", "r:b"]}
    assert model.calls == [["a", "b"]]


def test_concurrent_requests_share_a_call_and_keep_their_order(make_batcher):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_texts=100)
    first = threading.Thread(target=b.submit, args=(["x"], 5.0))
    first.start()
    assert model.entered.wait(5)  # the model is busy with x: the next requests queue up
    jobs = {i: [f"{i}-{j}" for j in range(i + 1)] for i in range(5)}
    threads, results, errors = _submit_in_threads(b, jobs)
    wait_until(lambda: b._queued_items == 15)
    gate.set()
    for t in [first, *threads]:
        t.join(5)
    assert not errors
    for i, items in jobs.items():
        assert results[i] == [f"r:{x}" for x in items]
    assert len(model.calls) == 2  # x alone, then all five queued requests together
    assert sorted(model.calls[1]) == sorted(x for items in jobs.values() for x in items)


def test_batch_limit_counts_texts_and_never_splits_a_request(make_batcher):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_texts=10)
    blocker = threading.Thread(target=b.submit, args=(["x"], 5.0))
    blocker.start()
    assert model.entered.wait(5)
    jobs = {"a": [f"a{i}" for i in range(6)], "b": [f"b{i}" for i in range(6)], "big": [f"g{i}" for i in range(25)]}
    threads, results, errors = [], {}, {}
    for key in ("a", "b", "big"):  # enqueue in a known order
        t, got, failed = _submit_in_threads(b, {key: jobs[key]})
        threads += t
        results[key], errors[key] = got, failed
        queued = sum(len(jobs[k]) for k in jobs if k <= key)
        wait_until(lambda n=queued: b._queued_items == n)
    gate.set()
    for t in [blocker, *threads]:
        t.join(5)
    sizes = [len(c) for c in model.calls[1:]]
    assert sorted(sizes) == [6, 6, 25]  # 6 + 6 > 10, so separate calls; 25 is alone and whole
    for call in model.calls[1:]:
        prefixes = {x[0] for x in call}
        assert len(prefixes) == 1  # no request was split or mixed beyond the limit
    for key, items in jobs.items():  # and each request got exactly its own results, in order
        assert errors[key] == {}
        assert results[key] == {key: [f"r:{x}" for x in items]}


def test_window_waits_for_announced_requests(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_wait_s=3600.0)  # the window cannot run out during the test
    arrival = b.arriving().__enter__()  # a request is being parsed
    t, first = in_thread(b.submit, ["a"], 3600.0)
    wait_until(lambda: b._busy)  # the batching thread took it and holds the batch open
    assert model.calls == []  # the batch waits for the announced request...
    second = arrival.submit(["b"], 5.0)  # ...which arrives and joins it
    arrival.__exit__(None, None, None)
    t.join(30)
    assert model.calls == [["a", "b"]]
    assert first == {"result": ["r:a"]} and second == ["r:b"]


def test_window_is_bounded(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_wait_s=0.05)
    with b.arriving():  # announced, but never submits: the batch goes when the window closes
        t, out = in_thread(b.submit, ["a"], 3600.0)
        t.join(30)
        assert out == {"result": ["r:a"]}


def test_full_queue_is_refused_at_once(make_batcher):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, queue_size=4)
    blocker = threading.Thread(target=b.submit, args=(["x"], 5.0))
    blocker.start()
    assert model.entered.wait(5)
    threads, results, errors = _submit_in_threads(b, {"a": ["1", "2", "3"]})
    wait_until(lambda: b._queued_items == 3)
    # refused while the model is still held: a submit that waited for room would never return here
    t, out = in_thread(b.submit, ["4", "5"], 3600.0)
    t.join(30)
    assert isinstance(out.get("error"), QueueFullError)
    gate.set()
    for t in [blocker, *threads]:
        t.join(5)
    assert results["a"] == ["r:1", "r:2", "r:3"]


def test_request_past_its_deadline_is_not_run(make_batcher):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model)
    blocker = threading.Thread(target=b.submit, args=(["x"], 5.0))
    blocker.start()
    assert model.entered.wait(5)
    with pytest.raises(DeadlineError):
        b.submit(["late"], 0.05)
    gate.set()
    blocker.join(5)
    assert b.submit(["after"], 5.0) == ["r:after"]
    assert all("late" not in call for call in model.calls)


def test_a_failing_batch_fails_only_its_requests(make_batcher):
    model = FakeModel()
    b = make_batcher(model)
    with pytest.raises(BatchFailedError) as info:
        b.submit(["boom"], 5.0)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert b.submit(["fine"], 5.0) == ["r:fine"]  # the batcher keeps serving


@pytest.mark.parametrize("poison", ["boom", "exit"])
def test_failing_batches_on_the_batching_thread_fail_alone(make_batcher, poison):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model, max_texts=1, max_wait_s=0.0)
    threads, results, errors = _submit_in_threads(b, {"first": ["first"]})
    assert model.entered.wait(5)  # "first" holds the model: the next ones queue for the batching thread
    more, results2, errors2 = _submit_in_threads(b, {"bad": [poison], "good": ["good"]})
    wait_until(lambda: b._queued_items == 2)
    gate.set()
    for t in threads + more:
        t.join(10)
    assert results == {"first": ["r:first"]}
    assert results2 == {"good": ["r:good"]}
    assert isinstance(errors2["bad"], BatchFailedError)
    assert b._thread.is_alive()  # and it keeps serving
    assert b.submit(["after"], 5.0) == ["r:after"]


def test_wrong_result_count_is_a_batch_failure(make_batcher):
    b = make_batcher(lambda items: items[:-1])
    with pytest.raises(BatchFailedError):
        b.submit(["a", "b"], 5.0)


def test_thread_starts_lazily_in_the_process_that_uses_it(make_batcher, monkeypatch):
    b = make_batcher(FakeModel())
    assert b._pid is None and b._thread is None  # nothing started at construction (the Gunicorn master)
    b.submit(["a"], 5.0)
    assert b._pid == os.getpid()
    first = b._thread
    monkeypatch.setattr(os, "getpid", lambda: 999_999)  # as if we were now a forked child
    assert b.submit(["b"], 5.0) == ["r:b"]
    assert b._pid == 999_999 and b._thread is not first and b._thread.is_alive()


def test_a_batching_thread_that_died_is_started_again(make_batcher):
    b = make_batcher(FakeModel())
    b.submit(["a"], 5.0)
    first = b._thread
    with b._cond:  # make the thread return, as if it had died
        b._closed = True
        b._cond.notify_all()
    first.join(5)
    assert not first.is_alive()
    b._closed = False
    with b.arriving():  # another request on its way: this one queues for the batching thread
        assert b.submit(["b"], 5.0) == ["r:b"]
    assert b._thread is not first and b._thread.is_alive()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_works_in_a_forked_child(make_batcher):
    b = make_batcher(FakeModel())
    b.submit(["parent"], 5.0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's thread did not survive the fork; a new one must start
        try:
            ok = b.submit(["child"], 5.0) == ["r:child"] and b._pid == os.getpid()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)


def test_close_finishes_queued_work(make_batcher):
    gate = threading.Event()
    model = FakeModel(gate)
    b = make_batcher(model)
    threads, results, errors = _submit_in_threads(b, {"a": ["1"], "b": ["2"]})
    assert model.entered.wait(5)
    wait_until(lambda: b._queued_items == 1)  # one runs, the other is queued: close must finish it
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.set()
    closer.join(5)
    for t in threads:
        t.join(5)
    assert results == {"a": ["r:1"], "b": ["r:2"]} and not errors
