"""Per-worker micro-batching: concurrent requests' texts share one model call.

Gunicorn's ``gthread`` workers handle requests in threads. One model call runs at a time per
worker: a request that finds the model idle, with nobody queued or on the way, runs at once in its
own thread; otherwise its texts join a bounded queue and one batching thread runs the model on up
to ``max_texts`` queued texts at once. The collection window is used only while other requests
are known to be on their way (``arriving``), so batching never adds idle waiting.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tagifai_api.serving.forks import reset_after_fork

log = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The queue holds ``queue_size`` texts already."""


class DeadlineError(Exception):
    """The job's deadline passed before the model could run it."""


class BatchFailedError(Exception):
    """The model raised on the batch this job was part of (the original is ``__cause__``)."""


class ClosedError(Exception):
    """The batcher was closed."""


class _Done:
    """A job's one-shot "finished" flag on one bare lock, held until set.

    ``threading.Event`` is a Python ``Condition``: setting it takes its lock and notifies, and each
    waiter allocates a lock of its own and must retake the condition's lock to return, all while
    holding the GIL. Here setting is one C-level ``release`` and waiting one ``acquire``.
    """

    __slots__ = ("_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._set = False

    def set(self) -> None:
        """Mark done (once per job, by the one thread that ran or expired it)."""
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """True once set; False if ``timeout`` seconds passed first."""
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # stays unlocked: any later wait returns at once
            return True
        return self._set


@dataclass
class _Job:
    items: Sequence
    deadline: float
    enqueued: float
    done: _Done = field(default_factory=_Done)
    taken: bool = False
    cancelled: bool = False
    result: list | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What one model call served, for metrics."""

    texts: int
    jobs: int
    queue_wait: list[float]
    seconds: float
    expired: int


class MicroBatcher:
    """Bounded queue plus one thread that runs ``predict_fn`` on batches of items.

    Args:
        predict_fn: maps a list of items to a list of results of the same length and order.
        max_texts: most items in one call; a job larger than that is run alone, never split.
        max_wait_s: longest a batch waits for requests that are on their way.
        queue_size: most items waiting; beyond it :meth:`submit` raises :class:`QueueFullError`.
        on_batch: called with :class:`BatchStats` after each model call (metrics).
    """

    def __init__(
        self,
        predict_fn: Callable[[list], list],
        max_texts: int = 128,
        max_wait_s: float = 0.002,
        queue_size: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.predict_fn = predict_fn
        self.max_texts = max_texts
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.on_batch = on_batch
        self._pid: int | None = None
        self._reset()
        reset_after_fork(self._reset)

    def _reset(self) -> None:
        """Fresh lock, queue and (lazily) thread: nothing is inherited across a fork."""
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Job] = deque()
        self._queued_items = 0
        self._arriving = 0
        self._closed = False
        self._busy = False  # a model call is running (or a batch is being collected): one at a time
        self._collecting = False  # the batching thread is waiting in a collection window for arrivals
        self._thread: threading.Thread | None = None
        self._pid = None
        atexit.register(self.close)  # a worker that exits finishes what it holds

    def _ensure_thread(self, queuing: bool) -> None:
        if self._pid != os.getpid():  # first use here; a fork resets through reset_after_fork
            self._pid = os.getpid()
            self._thread = None
        # whether it died is asked only when a job is about to wait for it (is_alive() takes a lock)
        if self._thread is None or (queuing and not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._run, name="tagifai-batcher", daemon=True)
            self._thread.start()

    def arriving(self) -> _Arrival:
        """Announce a request that will submit soon, so that a forming batch waits for it."""
        return _Arrival(self)

    def submit(self, items: Sequence, timeout_s: float, _announced: bool = False) -> list:
        """Queue ``items``, wait, and return their results in order.

        Raises:
            QueueFullError: at once, when the queue cannot take them.
            DeadlineError: when ``timeout_s`` passed before they were run.
            BatchFailedError: when the model failed on their batch.
        """
        now = time.monotonic()
        job = _Job(items=items, deadline=now + timeout_s, enqueued=now)
        with self._cond:
            if _announced:
                self._arriving = max(self._arriving - 1, 0)
            if self._closed:
                raise ClosedError("the batcher is closed")
            inline = not self._busy and not self._queue and self._arriving == 0
            self._ensure_thread(queuing=not inline)
            if inline:  # nothing to wait for: run in this thread, sparing two thread switches
                self._busy = True
            else:
                if self._queued_items + len(items) > self.queue_size and self._queue:
                    raise QueueFullError(f"{self._queued_items} texts queued, limit {self.queue_size}")
                self._queue.append(job)
                self._queued_items += len(items)
                # wake the batching thread only if it can act now: while a model call runs it would
                # find the model busy and sleep again, and _release() wakes it when the call ends
                if not self._busy or self._collecting:
                    self._cond.notify()
        if inline:
            job.taken = True
            try:
                self._execute([job])
            finally:
                self._release()
        elif not job.done.wait(timeout_s):
            with self._cond:
                if not job.taken:  # still queued: withdraw it rather than run it late
                    job.cancelled = True
                    self._queue.remove(job)
                    self._queued_items -= len(job.items)
                    raise DeadlineError(f"not run within {timeout_s * 1000:.0f} ms")
            job.done.wait()  # already running: it finishes in a moment
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _take(self) -> list[_Job] | None:
        """Wait for work and take a batch, collecting late arrivals for up to ``max_wait_s``."""
        with self._cond:
            while not self._queue or self._busy:
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            self._busy = True
            batch: list[_Job] = []
            count = 0
            window_end = None
            while True:
                while self._queue and (not batch or count + len(self._queue[0].items) <= self.max_texts):
                    job = self._queue.popleft()
                    job.taken = True
                    self._queued_items -= len(job.items)
                    batch.append(job)
                    count += len(job.items)
                if count >= self.max_texts or self._queue or self._arriving <= 0 or self._closed:
                    return batch
                now = time.monotonic()
                window_end = window_end or now + self.max_wait_s
                if now >= window_end:
                    return batch
                self._collecting = True
                try:
                    self._cond.wait(window_end - now)
                finally:
                    self._collecting = False

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._execute(batch)
            finally:
                self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            if self._queue:  # only the batching thread waits on the condition, and only for work
                self._cond.notify()

    def _execute(self, batch: list[_Job]) -> None:
        start = time.monotonic()
        live = []
        for job in batch:
            if job.deadline < start:
                job.error = DeadlineError("deadline passed while queued")
                job.done.set()
            else:
                live.append(job)
        items = [item for job in live for item in job.items]
        elapsed = 0.0
        if items:
            try:
                results = self.predict_fn(items)
                if len(results) != len(items):
                    raise ValueError(f"predict_fn returned {len(results)} results for {len(items)} items")
            except BaseException as exc:  # noqa: BLE001 - the failure belongs to this batch's requests only
                log.exception("batch of %d texts failed", len(items))
                for job in live:
                    job.error = BatchFailedError(str(exc))
                    job.error.__cause__ = exc
                    job.done.set()
            else:
                pos = 0
                for job in live:
                    job.result = results[pos : pos + len(job.items)]
                    pos += len(job.items)
                    job.done.set()
            elapsed = time.monotonic() - start
        if self.on_batch is not None and items:
            try:
                self.on_batch(
                    BatchStats(
                        texts=len(items),
                        jobs=len(live),
                        queue_wait=[start - job.enqueued for job in live],
                        seconds=elapsed,
                        expired=len(batch) - len(live),
                    )
                )
            except Exception:  # noqa: BLE001 - metrics must never take the batcher down
                log.exception("on_batch callback failed")

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop taking work, finish what is queued, and join the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if (thread is not None and thread.is_alive() and self._pid == os.getpid()
                and thread is not threading.current_thread()):
            thread.join(timeout_s)


class _Arrival:
    """Context manager for a request between arriving and submitting."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self._pending = False

    def __enter__(self) -> _Arrival:
        b = self._batcher
        with b._cond:
            b._arriving += 1
        self._pending = True
        return self

    def submit(self, items: Sequence, timeout_s: float) -> list:
        """Submit once; the request is no longer 'arriving' from here on."""
        self._pending = False
        return self._batcher.submit(items, timeout_s, _announced=True)

    def __exit__(self, *exc) -> None:
        self.withdraw()

    def withdraw(self) -> None:
        """The request will not submit after all (an explained one): stop holding batches for it."""
        if self._pending:
            b = self._batcher
            with b._cond:
                b._arriving = max(b._arriving - 1, 0)
                b._cond.notify_all()
            self._pending = False
