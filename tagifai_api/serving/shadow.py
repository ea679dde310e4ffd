"""Shadow scoring: answered requests are scored again by a candidate version, off the client's path.

The request thread only appends to a bounded queue (a full queue drops the request and counts it);
one background thread per worker runs the shadow version on whatever has queued up, in one model
call, and counts whether its tags agree with the ones the client got.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

from tagifai_api.ml.predict import Predictor
from tagifai_api.serving.forks import reset_after_fork

log = logging.getLogger(__name__)

_ERROR_LOG_INTERVAL_S = 60.0


class ShadowObserver(Protocol):
    """Where outcomes go (the web layer counts them in Prometheus, summed across workers)."""

    def shadow(self, model_version: str, shadow_version: str, agree: int, disagree: int) -> None: ...

    def shadow_dropped(self, shadow_version: str, reason: str, count: int) -> None: ...


class ShadowScorer:
    """A bounded queue of answered requests and the thread that scores them with the shadow.

    Args:
        get_predictor: the predictor of a version (loads it on first use; raises when it cannot).
        observer: told of each outcome and each dropped request.
        queue_size: most requests waiting; beyond it new ones are dropped.
        max_texts: most texts scored in one model call.
        max_wait_s: how often the thread wakes to score what has gathered, in one call.
    """

    def __init__(self, get_predictor: Callable[[str], Predictor], observer: ShadowObserver | None,
                 queue_size: int = 256, max_texts: int = 128, max_wait_s: float = 0.05) -> None:
        self.get_predictor = get_predictor
        self.observer = observer
        self.queue_size = queue_size
        self.max_texts = max_texts
        self.max_wait_s = max_wait_s
        self._reset()
        reset_after_fork(self._reset)

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._last_error_log = 0.0
        self.scored = 0
        self.dropped = 0

    def submit(self, model_version: str, shadow_version: str, texts: Sequence[str], results: Sequence[dict],
               then: Callable[[list[str] | None], None] | None = None) -> None:
        """Queue an answered request for the shadow; never blocks, never raises. ``then`` is called
        with the shadow's tags once scored, or with None if the request is dropped."""
        if self._queue.qsize() >= self.queue_size:
            self._drop(shadow_version, "queue_full", 1)
            self._then(then, None)
            return
        if self._thread is None or not self._thread.is_alive():
            self._start()
        self._queue.put((model_version, shadow_version, texts, results, then))

    @staticmethod
    def _then(then: Callable[[list[str] | None], None] | None, tags: list[str] | None) -> None:
        if then is not None:
            try:
                then(tags)
            except Exception:  # noqa: BLE001 - what follows the shadow must never fail a request
                log.exception("after shadow scoring")

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tagifai-shadow", daemon=True)
                self._thread.start()

    def _drop(self, shadow_version: str, reason: str, count: int) -> None:
        self.dropped += count
        if self.observer is not None:
            try:
                self.observer.shadow_dropped(shadow_version, reason, count)
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                log.exception("shadow metrics failed")

    def _run(self) -> None:
        # wake on a clock rather than on each request: a request's put() then wakes no thread (no
        # GIL hand-over on its path), and one model call for everything gathered holds the GIL far
        # less than one call per request
        while True:
            stop = self._stop.wait(self.max_wait_s)
            batch: list[tuple] = []
            texts = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                batch.append(item)
                texts += len(item[2])
                if texts >= self.max_texts:
                    self._score(batch)
                    batch, texts = [], 0
            if batch:
                self._score(batch)
            if stop:
                return

    def _score(self, batch: list[tuple]) -> None:
        by_shadow: dict[str, list[tuple]] = defaultdict(list)
        for item in batch:
            by_shadow[item[1]].append(item)
        for shadow_version, items in by_shadow.items():
            try:
                predictor = self.get_predictor(shadow_version)
                shadow = predictor.predict([t for _, _, texts, _, _ in items for t in texts])
            except Exception as exc:  # noqa: BLE001 - a broken shadow must never touch the served traffic
                self._drop(shadow_version, "error", len(items))
                for item in items:
                    self._then(item[4], None)
                now = time.monotonic()
                if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                    self._last_error_log = now
                    log.error("shadow version %s failed: %s: %s", shadow_version, type(exc).__name__, exc)
                continue
            counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            pos = 0
            for model_version, _, _, results, then in items:
                start = pos
                for served in results:
                    agreed = served["predicted_tag"] == shadow[pos]["predicted_tag"]
                    counts[model_version][0 if agreed else 1] += 1
                    pos += 1
                self._then(then, [s["predicted_tag"] for s in shadow[start:pos]])
            self.scored += pos
            if self.observer is not None:
                for model_version, (agree, disagree) in counts.items():
                    try:
                        self.observer.shadow(model_version, shadow_version, agree, disagree)
                    except Exception:  # noqa: BLE001
                        log.exception("shadow metrics failed")

    def close(self, timeout_s: float = 5.0) -> None:
        """Score what is queued, then stop the thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout_s)
