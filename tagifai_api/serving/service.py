"""The model versions this worker serves: loading, warm-up, the default, cache, batching and shadow.

The default and the shadow are whatever the registry's store says (see
:mod:`tagifai_api.store.registry`): a watcher thread polls the store's change counter every
``poll_s`` and, when it moved, re-reads them and loads a new default before serving it, so a switch
made by any worker, replica or the CLI reaches this one with no signal. Requests never wait for the
store: a worker serves what it last read while the store is slow or down. Other versions are
loaded on first request, at most ``max_loaded`` at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.ml.predict import Predictor
from tagifai_api.serving.batcher import BatchFailedError, BatchStats, ClosedError, DeadlineError, MicroBatcher
from tagifai_api.serving.cache import LRUCache
from tagifai_api.serving.forks import reset_after_fork
from tagifai_api.serving.predlog import PredictionLog
from tagifai_api.serving.shadow import ShadowObserver, ShadowScorer
from tagifai_api.store.database import StoreError
from tagifai_api.store.registry import NoDefaultError, Registry

log = logging.getLogger(__name__)

_RETRY_LOAD_S = 5.0


class ServingObserver(ShadowObserver, Protocol):
    """What the service reports (the web layer implements it with Prometheus metrics)."""

    def batch(self, stats: BatchStats, version: str) -> None: ...

    def cache(self, hits: int, misses: int) -> None: ...

    def model_loaded_now(self, version: str, loaded_at: float) -> None: ...

    def fallback(self, wanted: str, serving: str, active: bool) -> None: ...


def _history_or_empty(registry: Registry) -> list[dict]:
    try:
        return registry.history()
    except StoreError:
        return []


class ModelUnavailableError(Exception):
    """No default model could be loaded; the message says why."""


class VersionLoadError(ArtifactError):
    """A version exists but this worker cannot load it; ``reason`` says why."""

    def __init__(self, version: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(reason)


class SwitchRefusedError(Exception):
    """The registry change does not fit the service's state (a pinned version, a shadow that is the default)."""


class Served:
    """One version loaded in this worker, with its own micro-batcher (batches never mix versions)."""

    __slots__ = ("version", "model", "predictor", "batcher")

    def __init__(self, model: ModelVersion, predictor: Predictor, batcher: MicroBatcher | None) -> None:
        self.version = model.version
        self.model = model
        self.predictor = predictor
        self.batcher = batcher

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class ServiceRequest:
    """One request between the arrival of its body and its answer, bound to one version.

    It is announced to that version's batcher at once, so a batch being formed waits for its texts
    (never for a client still sending); leaving the ``with`` block withdraws it if it never submitted.
    """

    __slots__ = ("_service", "_served", "_arrival", "version", "request_id")

    def __init__(self, service: ModelService, served: Served, request_id: str | None = None) -> None:
        self._service = service
        self._served = served
        self.request_id = request_id
        self._arrival = served.batcher.arriving() if served.batcher is not None else None
        self.version = served.version

    def __enter__(self) -> ServiceRequest:
        if self._arrival is not None:
            self._arrival.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._arrival is not None:
            self._arrival.__exit__(*exc)

    def predict(self, texts: Sequence[str], timeout_s: float) -> list[dict]:
        """As :meth:`ModelService.predict`, through the version this request is bound to."""
        return self._service.predict(texts, timeout_s, self._arrival, self._served, self.request_id)

    def explain(self, texts: Sequence[str], timeout_s: float) -> list[dict]:
        """As :meth:`ModelService.explain` (outside the batcher, so the arrival is withdrawn first)."""
        if self._arrival is not None:
            self._arrival.withdraw()
        return self._service.explain(texts, timeout_s, self._served, self.request_id)


class ModelService:
    """Owns this worker's loaded versions, prediction cache, micro-batchers and shadow scorer.

    Args:
        registry: the model versions and the store that records the default and the shadow.
        version: ``"default"`` to follow the registry's default, or a version to pin.
        batching: use micro-batchers (else predict in the request thread).
        max_texts, max_wait_s, queue_size: each batcher's limits.
        cache_size: LRU entries (0: no cache).
        observer: told of each model call, cache look-up, default change and shadow outcome.
        max_loaded: most versions kept loaded; the least recently used goes first, never the
            default or the shadow.
        poll_s: how often the watcher polls the store for changes (0: never; :meth:`refresh` by hand).
        shadow_queue_size: most requests waiting for the shadow.
        prediction_log: where answered texts are recorded (None, or one that does not record: they are
            not); closed with the service.
        fallback: when the default cannot be loaded, serve the last good version instead (see
            :meth:`refresh`); False: answer 503 until it loads.
    """

    def __init__(
        self,
        registry: Registry,
        version: str = "default",
        *,
        batching: bool = True,
        max_texts: int = 128,
        max_wait_s: float = 0.002,
        queue_size: int = 1024,
        cache_size: int = 4096,
        observer: ServingObserver | None = None,
        max_loaded: int = 3,
        poll_s: float = 1.0,
        shadow_queue_size: int = 256,
        prediction_log: PredictionLog | None = None,
        fallback: bool = True,
    ) -> None:
        self.registry = registry
        self.prediction_log = prediction_log
        self._recording = prediction_log if prediction_log is not None and prediction_log.record else None
        self.fallback_enabled = fallback
        #: ``{"wanted", "serving", "reason"}`` while this worker serves another version than the default
        self.fallback: dict | None = None
        self.artifacts_dir = registry.root
        self.pinned = None if version == "default" else version
        self.batching = batching
        self._batcher_limits = {"max_texts": max_texts, "max_wait_s": max_wait_s, "queue_size": queue_size}
        self.cache = LRUCache(cache_size)
        self.observer = observer
        self.max_loaded = max(1, max_loaded)
        self.poll_s = poll_s
        self.default: Served | None = None
        self.shadow_version: str | None = None
        self.load_error: str | None = None
        #: why the store could not be read at the last attempt (None: it could)
        self.store_error: str | None = None
        self._remembered: tuple[str | None, str | None] | None = None
        self.loaded_at: float | None = None
        self._last_attempt = 0.0
        self._last_failure: str | None = None
        self._closed = False
        self._loaded: OrderedDict[str, Served] = OrderedDict()
        self.shadow = ShadowScorer(lambda v: self.get(v).predictor, observer, shadow_queue_size, max_texts)
        self._reset()
        reset_after_fork(self._reset)
        self.try_load()

    def _reset(self) -> None:
        """Fresh locks and watcher: nothing is inherited across a fork."""
        self._lock = threading.Lock()  # guards _loaded and _failures
        self._explain_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._failures: dict[str, tuple[float, ArtifactError]] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if self.poll_s > 0 and not self._closed:
            self._watcher = threading.Thread(target=self._watch, name="tagifai-registry-watcher", daemon=True)
            self._watcher.start()

    # the default version, as the single-version code before it knew them
    @property
    def model(self) -> ModelVersion | None:
        return self.default.model if self.default is not None else None

    @property
    def predictor(self) -> Predictor | None:
        return self.default.predictor if self.default is not None else None

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.default.batcher if self.default is not None else None

    @property
    def ready(self) -> bool:
        """True once a default is loaded and has answered a warm-up prediction."""
        return self.default is not None

    def loaded_versions(self) -> list[str]:
        """Versions loaded in this worker, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def try_load(self) -> bool:
        """Load the default now; on failure remember why (and retry later, rate-limited)."""
        self._last_attempt = time.monotonic()
        self.refresh()
        return self.ready

    def maybe_reload(self) -> None:
        """Retry a failed default load, at most every few seconds (a model may be trained after start)."""
        if self.default is None and time.monotonic() - self._last_attempt >= _RETRY_LOAD_S:
            self.try_load()

    def require_model(self) -> Predictor:
        """The default's predictor, or :class:`ModelUnavailableError`."""
        return self.get().predictor

    def refresh(self) -> None:
        """Follow ``DEFAULT`` and ``SHADOW``: load a new default before serving it; note the shadow."""
        with self._refresh_lock:
            try:
                default, shadow = self.registry.pointers()
            except StoreError as exc:
                self._store_failed(exc)
                last = self.registry.last_known() if self.default is None else None
                if last is None or not (self.pinned or last[0]):
                    return
                # a worker started during an outage serves what this host's workers last read
                default, shadow = last
                log.warning("serving %s, the default this host last read, until the store answers",
                            self.pinned or default)
            else:
                if self.store_error is not None:
                    log.info("the state store %s answers again", self.registry.store.describe())
                    self.store_error = None
                if (default, shadow) != self._remembered:
                    self.registry.remember(default, shadow)
                    self._remembered = (default, shadow)
            name = self.pinned or default
            if name is None:
                self._default_failed(NoDefaultError(
                    f"no default model in the state store {self.registry.store.describe()}: train one with "
                    "`python -m tagifai_api train`"))
                return
            if shadow != self.shadow_version:
                log.info("shadow model %s (was %s) in pid %d", shadow, self.shadow_version, os.getpid())
                self.shadow_version = shadow
            if self.default is not None and self.default.version == name:
                self._end_fallback(name)
                return
            try:
                # in a fallback, the wanted default is tried again at every poll, not once in a while
                served = self._install(*self._verified(name)) if self.fallback is not None else self._load(name)
            except Exception as exc:  # noqa: BLE001 - _load made it an ArtifactError; anything else is a bug
                self._default_failed(exc)
                if self.fallback_enabled and not self.pinned:
                    self._fall_back(name, exc, history=_history_or_empty(self.registry))
                return
            previous, self.default = self.default, served
            self._end_fallback(name)
            self.load_error = None
            self._last_failure = None
            self.loaded_at = time.time()
            log.info("default model %s (was %s) in pid %d", name, previous and previous.version, os.getpid(),
                     extra={"event": "default_switched", "model_version": name})
            if self.observer is not None:
                self.observer.model_loaded_now(name, self.loaded_at)

    def _fall_back(self, wanted: str, exc: Exception, history: list[dict]) -> None:
        """Serve the newest version of the default's history that loads and warms up, else the newest
        sound version; never one that fails its checksums. The recorded default does not change: this
        is this worker's state, and it ends when ``wanted`` loads (:meth:`refresh` tries at every poll)."""
        reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        current = self.default.version if self.default is not None else None
        earlier = [e["version"] for e in reversed(history)]
        others = [v for v in reversed(artifacts.list_versions(self.artifacts_dir)) if v not in earlier]
        serving = None
        for candidate in dict.fromkeys([*([current] if current else []), *earlier, *others]):
            if candidate == wanted:
                continue
            if candidate == current:
                serving = self.default
                break
            try:
                serving = self._load(candidate)
                break
            except Exception:  # noqa: BLE001 - not this one either: try the next
                continue
        if serving is None:
            return  # nothing to serve: 503 as without a fallback, load_error says why
        changed = self.fallback is None or self.fallback["serving"] != serving.version \
            or self.fallback["wanted"] != wanted
        self.fallback = {"wanted": wanted, "serving": serving.version, "reason": reason}
        if self.default is not serving:
            self.default = serving
            self.loaded_at = time.time()
            if self.observer is not None:
                self.observer.model_loaded_now(serving.version, self.loaded_at)
        self.load_error = None
        if changed:
            log.error("default model %s cannot be loaded (%s); serving %s instead until it can", wanted, reason,
                      serving.version, extra={"event": "model_fallback", "model_version": serving.version,
                                              "wanted": wanted})
            if self.observer is not None:
                self.observer.fallback(wanted, serving.version, True)

    def _end_fallback(self, name: str) -> None:
        """The default, ``name``, is what this worker serves now (its files loaded again, or an admin
        switched or rolled back to what the fallback served): the fallback is over."""
        if self.fallback is None or self.default is None or self.default.version != name:
            return
        ended, self.fallback = self.fallback, None
        log.info("default model %s loads again; the fallback to %s is over", name, ended["serving"],
                 extra={"event": "model_fallback_over", "model_version": name})
        if self.observer is not None:
            self.observer.fallback(ended["wanted"], ended["serving"], False)

    def _default_failed(self, exc: Exception) -> None:
        message = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        if self.default is None:
            self.load_error = message
        if message != self._last_failure:  # once per distinct failure, not per poll
            self._last_failure = message
            log.error("default model not loaded%s: %s",
                      f" (still serving {self.default.version})" if self.default else "", message)

    def _store_failed(self, exc: StoreError) -> None:
        """Keep serving what was read last; say so once per distinct failure."""
        message = str(exc)
        if self.default is None:
            self.load_error = message
        if message != self.store_error:
            log.error("%s%s", message, f"; still serving {self.default.version}" if self.default else "")
        self.store_error = message

    def _watch(self) -> None:
        seen = None
        while not self._stop.wait(self.poll_s):
            try:
                generation = self.registry.store.generation()
            except StoreError as exc:
                self._store_failed(exc)
                continue
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("polling the state store failed")
                continue
            # a change, or a store or default that failed last time: read the pointers again
            if generation != seen or self.store_error is not None or self._last_failure is not None:
                seen = generation
                try:
                    self.refresh()
                except Exception:  # noqa: BLE001
                    log.exception("reading the registry failed")

    def get(self, version: str | None = None) -> Served:
        """A loaded version (``None`` or ``"default"``: the default), loading it on first use.

        Raises:
            ModelUnavailableError: no default is loaded.
            versions.UnknownVersionError: no such version exists.
            VersionLoadError: it exists but cannot be loaded; the message says why.
        """
        if version is None or version == "default":
            served = self.default
            if served is None:
                self.maybe_reload()
                served = self.default
                if served is None:
                    raise ModelUnavailableError(self.load_error or "the model is not loaded")
            return served
        with self._lock:
            served = self._loaded.get(version)
            if served is not None:
                self._loaded.move_to_end(version)
                return served
        try:
            return self._load(version)
        except versions.UnknownVersionError:
            raise
        except ArtifactError as exc:
            raise VersionLoadError(version, str(exc)) from None

    def request(self, version: str | None = None, request_id: str | None = None) -> ServiceRequest:
        """Begin answering one request with ``version`` (``None``: the default); see :class:`ServiceRequest`.
        Its answers are logged under ``request_id`` when the prediction log is on.

        Raises:
            as :meth:`get`.
        """
        return ServiceRequest(self, self.get(version), request_id)

    def model_version(self, version: str | None = None) -> ModelVersion:
        """The metadata (args, performance, labels) of a loaded version, loading it on first use."""
        return self.get(version).model

    def metadata(self, version: str) -> ModelVersion:
        """The metadata (args, performance, labels) of ``version`` without loading it: a loaded version's
        own, else read from its files (see :func:`versions.metadata`, whose errors it raises)."""
        with self._lock:
            served = self._loaded.get(version)
        if served is not None:
            return served.model
        return versions.metadata(self.artifacts_dir, version)

    # the registry, as this worker changes it: verify here (keeping the version loaded), write,
    # then follow at once; other workers and replicas follow within ``poll_s``
    def default_name(self) -> str | None:
        """The version new requests get: the pinned one, else what the registry says now."""
        if self.pinned:
            return self.pinned
        try:
            return self.registry.pointers()[0]
        except StoreError:
            return self.default.version if self.default is not None else None

    def shadow_name(self) -> str | None:
        """The shadow as the registry says now; while the store cannot be read, the one this worker
        last read (and scores with)."""
        try:
            return self.registry.pointers()[1]
        except StoreError:
            return self.shadow_version

    def check_switchable(self) -> None:
        """Refuse a default switch or rollback while a version is pinned."""
        if self.pinned:
            raise SwitchRefusedError(f"This service is pinned to {self.pinned} by TAGIFAI_MODEL_VERSION; unset "
                                     "it to switch the default through the registry.")

    def set_default(self, version: str, key_name: str | None = None,
                    reason: str | None = None) -> tuple[str | None, str]:
        """Verify ``version`` and make it the default; ``(previous, new)``."""
        self.check_switchable()
        switched = self.registry.set_default(version, self.verify, key_name, reason)
        self.refresh()
        return switched

    def rollback(self, key_name: str | None = None, reason: str | None = None,
                 **only_if) -> tuple[str | None, str]:
        """Make the previous default the default again (verified first); ``(previous, new)``.
        ``only_if``: ``expect`` and ``action`` (see :meth:`Registry.rollback`)."""
        self.check_switchable()
        switched = self.registry.rollback(self.verify, key_name, reason, **only_if)
        self.refresh()
        return switched

    def promote(self, version: str, expect: str | None, key_name: str | None = None,
                reason: str | None = None) -> tuple[str | None, str]:
        """Verify ``version`` and make it the default while ``expect`` still is; ``(previous, new)``."""
        self.check_switchable()
        switched = self.registry.promote(version, expect, self.verify, key_name, reason)
        self.refresh()
        return switched

    def set_shadow(self, version: str, key_name: str | None = None, reason: str | None = None,
                   action: str = "set_shadow") -> str | None:
        """Verify ``version`` and have it shadow the default; returns the shadow it replaced."""
        if version == self.default_name():
            raise SwitchRefusedError(f"{version} is the default already; a shadow is scored against the default.")
        previous = self.registry.set_shadow(version, self.verify, key_name, reason, action)
        self.refresh()
        return previous

    def clear_shadow(self, key_name: str | None = None, reason: str | None = None) -> str | None:
        """Stop shadow scoring; returns the shadow it removed."""
        previous = self.registry.clear_shadow(key_name, reason)
        self.refresh()
        return previous

    def verify(self, version: str) -> Served:
        """Check every file of ``version`` and warm it up now, even when it is loaded; keep it loaded."""
        model, predictor = self._verified(version, every_file=True)
        with self._lock:
            served = self._loaded.get(version)
        return served or self._install(model, predictor)

    def _verified(self, version: str, every_file: bool = False) -> tuple[ModelVersion, Predictor]:
        try:
            return versions.verify(self.artifacts_dir, version, every_file=every_file)
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a permission error: the version cannot be served
            raise ArtifactError(f"{self.artifacts_dir / version}: {type(exc).__name__}: {exc}") from None

    def _load(self, version: str) -> Served:
        versions.require_known(self.artifacts_dir, version)
        with self._lock:
            lock = self._loading.setdefault(version, threading.Lock())
        with lock:  # one load per version at a time; the others wait for it
            with self._lock:
                served = self._loaded.get(version)
                if served is not None:
                    return served
                failed = self._failures.get(version)
                if failed is not None and time.monotonic() - failed[0] < _RETRY_LOAD_S:
                    raise failed[1]
            try:
                model, predictor = self._verified(version)
            except ArtifactError as exc:
                with self._lock:
                    self._failures[version] = (time.monotonic(), exc)
                raise
            return self._install(model, predictor)

    def _install(self, model: ModelVersion, predictor: Predictor) -> Served:
        name = model.version
        batcher = None
        if self.batching:
            on_batch = None
            if self.observer is not None:
                observer = self.observer

                def on_batch(stats: BatchStats) -> None:
                    observer.batch(stats, name)

            batcher = MicroBatcher(lambda cleaned: self._run_model(predictor, cleaned), on_batch=on_batch,
                                   **self._batcher_limits)
        served = Served(model, predictor, batcher)
        with self._lock:
            self._failures.pop(name, None)
            self._loaded[name] = served
            evicted = self._evict(keep=name)
        for old in evicted:
            old.close()
            log.info("model %s unloaded in pid %d", old.version, os.getpid())
        log.info("model %s loaded in pid %d", name, os.getpid())
        return served

    def _evict(self, keep: str) -> list[Served]:
        """Least recently used versions beyond ``max_loaded``, never the default, the shadow or ``keep``."""
        pinned = {keep, self.shadow_version, self.default.version if self.default is not None else None}
        evicted = []
        for name in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                break
            if name not in pinned:
                evicted.append(self._loaded.pop(name))
        return evicted

    # every model call of this worker goes through these two (tests wrap them to gate or fail inference)
    def _run_model(self, predictor: Predictor, cleaned: list[str]) -> list[dict]:
        return predictor.predict_clean(cleaned)

    def _run_explainer(self, predictor: Predictor, texts: Sequence[str]) -> list[dict]:
        return predictor.explain(texts)

    def predict(self, texts: Sequence[str], timeout_s: float, arrival=None, served: Served | None = None,
                request_id: str | None = None) -> list[dict]:
        """Predictions for raw texts, in order: cache first, then one model call for the rest.

        Args:
            texts: raw texts.
            timeout_s: how long the texts may wait in the batcher's queue.
            arrival: the ``served.batcher.arriving()`` context the request announced itself with.
            served: the version to use (default: the default).
            request_id: the answers are logged under it (with the prediction log on).
        """
        if served is None:
            served = self.get()
        predictor = served.predictor
        version = served.version
        cleaned = [predictor.clean(t) for t in texts]
        results: list[dict | None] = [self.cache.get((version, c)) for c in cleaned]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            todo = [cleaned[i] for i in missing]
            if served.batcher is None:
                start = time.monotonic()
                fresh = self._run_model(predictor, todo)
                if self.observer is not None:
                    self.observer.batch(BatchStats(texts=len(todo), jobs=1, queue_wait=[0.0],
                                                   seconds=time.monotonic() - start, expired=0), version)
            else:
                try:
                    fresh = arrival.submit(todo, timeout_s) if arrival is not None else served.batcher.submit(todo, timeout_s)
                except ClosedError:
                    if self._closed:
                        raise
                    # evicted between the look-up and the submit: load it again
                    fresh = self.get(version).batcher.submit(todo, timeout_s)
            for i, r in zip(missing, fresh):
                results[i] = r
                self.cache.put((version, cleaned[i]), r)
        if self.observer is not None and self.cache.maxsize:
            self.observer.cache(len(texts) - len(missing), len(missing))
        self._after(request_id, version, texts, cleaned, results, predictor)
        return results  # type: ignore[return-value]

    def _after(self, request_id: str | None, version: str, texts: Sequence[str], cleaned: Sequence[str],
               results: Sequence[dict], predictor: Predictor) -> None:
        """Hand the answers to the shadow and the prediction log, both off the request path; with a
        shadow, the log's rows wait for its tags (or go without them if the shadow drops them)."""
        shadow = self.shadow_version
        logged = self._recording if request_id is not None else None
        if shadow is not None and shadow != version:
            then = None
            if logged is not None:
                def then(tags: list[str] | None) -> None:
                    logged.add(request_id, version, texts, cleaned, results, predictor,
                               (shadow, tags) if tags is not None else None)
            self.shadow.submit(version, shadow, texts, results, then)
        elif logged is not None:
            logged.add(request_id, version, texts, cleaned, results, predictor)

    def explain(self, texts: Sequence[str], timeout_s: float, served: Served | None = None,
                request_id: str | None = None) -> list[dict]:
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
        served = served or self.get()
        predictor = served.predictor
        if not self._explain_lock.acquire(timeout=timeout_s):
            raise DeadlineError(f"no explanation slot within {timeout_s * 1000:.0f} ms")
        try:
            results = self._run_explainer(predictor, texts)
        except Exception as exc:  # noqa: BLE001 - the failure is this request's; the worker keeps serving
            log.exception("explaining %d texts failed", len(texts))
            raise BatchFailedError(str(exc)) from exc
        finally:
            self._explain_lock.release()
        if self._recording is not None and request_id is not None:
            self._recording.add(request_id, served.version, texts, [predictor.clean(t) for t in texts], results,
                                predictor)
        return results

    def close(self) -> None:
        """Stop the watcher, finish queued work and stop every batching and shadow thread.

        The watcher is waited for (a poll in progress ends within the store's timeouts), so the
        store can be closed next without a poll opening a connection behind its back."""
        self._closed = True
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=30)
        self.shadow.close()
        if self.prediction_log is not None:
            self.prediction_log.close()
        with self._lock:
            loaded = list(self._loaded.values())
        for served in loaded:
            served.close()
