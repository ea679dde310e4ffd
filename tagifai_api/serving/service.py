"""The model as this worker serves it: loading, warm-up, cache, batching and their failures."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.ml.predict import Predictor
from tagifai_api.serving.batcher import BatchFailedError, BatchStats, DeadlineError, MicroBatcher
from tagifai_api.serving.cache import LRUCache

log = logging.getLogger(__name__)

_RETRY_LOAD_S = 5.0


class ServingObserver(Protocol):
    """What the service reports (the web layer implements it with Prometheus metrics)."""

    def batch(self, stats: BatchStats) -> None: ...

    def cache(self, hits: int, misses: int) -> None: ...

    def model_loaded_now(self, version: str, loaded_at: float) -> None: ...


class ModelUnavailableError(Exception):
    """No model could be loaded; the message says why."""


class ModelService:
    """Owns this worker's model version, prediction cache and micro-batcher.

    Args:
        artifacts_dir: where model versions live.
        version: the version to serve, or ``"default"``.
        batching: use the micro-batcher (else predict in the request thread).
        max_texts, max_wait_s, queue_size: the batcher's limits.
        cache_size: LRU entries (0: no cache).
        observer: told of each model call and of cache look-ups (metrics).
        predict_hook: wraps the model call (tests inject failures through it).
    """

    def __init__(
        self,
        artifacts_dir: str | Path,
        version: str = "default",
        *,
        batching: bool = True,
        max_texts: int = 128,
        max_wait_s: float = 0.002,
        queue_size: int = 1024,
        cache_size: int = 4096,
        observer: ServingObserver | None = None,
        predict_hook: Callable[[Callable, list], list] | None = None,
    ) -> None:
        self.artifacts_dir = Path(artifacts_dir)
        self.requested_version = version
        self.model: ModelVersion | None = None
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        self.loaded_at: float | None = None
        self.cache = LRUCache(cache_size)
        self._predict_hook = predict_hook
        self.observer = observer
        self._load_lock = threading.Lock()
        self._explain_lock = threading.Lock()
        self._last_attempt = 0.0
        self.batcher = (
            MicroBatcher(self._run_model, max_texts=max_texts, max_wait_s=max_wait_s,
                         queue_size=queue_size,
                         on_batch=observer.batch if observer is not None else None)
            if batching
            else None
        )
        self.try_load()

    def try_load(self) -> bool:
        """Load and warm up the model; on failure remember why (and retry later, rate-limited)."""
        with self._load_lock:
            if self.predictor is not None:
                return True
            self._last_attempt = time.monotonic()
            try:
                model = artifacts.load(self.artifacts_dir, self.requested_version)
                predictor = Predictor(model)
                predictor.predict(["warm-up: a real prediction before the first request"])
            except ArtifactError as exc:
                self.load_error = str(exc)
                log.error("model not loaded: %s", exc)
                return False
            except Exception as exc:  # noqa: BLE001 - a broken model must leave the worker up, answering 503
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.exception("model not loaded")
                return False
            self.model, self.predictor = model, predictor
            self.loaded_at = time.time()
            self.load_error = None
            log.info("model %s loaded in pid %d", model.version, os.getpid())
            if self.observer is not None:
                self.observer.model_loaded_now(model.version, self.loaded_at)
            return True

    @property
    def ready(self) -> bool:
        """True once a model is loaded and has answered a warm-up prediction."""
        return self.predictor is not None

    def maybe_reload(self) -> None:
        """Retry a failed load, at most every few seconds (a model may be trained after start)."""
        if self.predictor is None and time.monotonic() - self._last_attempt >= _RETRY_LOAD_S:
            self.try_load()

    def require_model(self) -> Predictor:
        """The predictor, or :class:`ModelUnavailableError` (after a rate-limited reload attempt)."""
        self.maybe_reload()
        if self.predictor is None:
            raise ModelUnavailableError(self.load_error or "the model is not loaded")
        return self.predictor

    def _run_model(self, cleaned: list[str]) -> list[dict]:
        predictor = self.predictor
        if self._predict_hook is not None:
            return self._predict_hook(predictor.predict_clean, cleaned)
        return predictor.predict_clean(cleaned)

    def predict(self, texts: Sequence[str], timeout_s: float, arrival=None) -> list[dict]:
        """Predictions for raw texts, in order: cache first, then one model call for the rest.

        Args:
            texts: raw texts.
            timeout_s: how long the texts may wait in the batcher's queue.
            arrival: the ``batcher.arriving()`` context the request announced itself with.
        """
        predictor = self.require_model()
        version = predictor.version
        cleaned = [predictor.clean(t) for t in texts]
        results: list[dict | None] = [self.cache.get((version, c)) for c in cleaned]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            todo = [cleaned[i] for i in missing]
            if self.batcher is None:
                start = time.monotonic()
                fresh = self._run_model(todo)
                if self.observer is not None:
                    self.observer.batch(BatchStats(texts=len(todo), jobs=1, queue_wait=[0.0],
                                                   seconds=time.monotonic() - start, expired=0))
            elif arrival is not None:
                fresh = arrival.submit(todo, timeout_s)
            else:
                fresh = self.batcher.submit(todo, timeout_s)
            for i, r in zip(missing, fresh):
                results[i] = r
                self.cache.put((version, cleaned[i]), r)
        if self.observer is not None and self.cache.maxsize:
            self.observer.cache(len(texts) - len(missing), len(missing))
        return results  # type: ignore[return-value]

    def explain(self, texts: Sequence[str], timeout_s: float) -> list[dict]:
        """Predictions for raw texts with their exact explanations (see :mod:`tagifai_api.ml.explain`).

        An explanation is two to three times the work of a prediction and is never the same for
        two texts that clean alike (its spans are in the original text), so explained requests
        stay out of the micro-batcher and the cache: a plain request never waits behind one in a
        batch, and the plain path has nothing new to check. They run in the request's own thread,
        one request at a time per worker, so they cannot crowd out plain requests either.

        Raises:
            ModelUnavailableError: no model is loaded.
            DeadlineError: another explained request held the worker for ``timeout_s``.
            BatchFailedError: the explainer failed (the original is ``__cause__``).
        """
        predictor = self.require_model()
        if not self._explain_lock.acquire(timeout=timeout_s):
            raise DeadlineError(f"no explanation slot within {timeout_s * 1000:.0f} ms")
        try:
            if self._predict_hook is not None:
                return self._predict_hook(predictor.explain, list(texts))
            return predictor.explain(texts)
        except Exception as exc:  # noqa: BLE001 - the failure is this request's; the worker keeps serving
            log.exception("explaining %d texts failed", len(texts))
            raise BatchFailedError(str(exc)) from exc
        finally:
            self._explain_lock.release()

    def close(self) -> None:
        """Finish queued work and stop the batching thread."""
        if self.batcher is not None:
            self.batcher.close()
