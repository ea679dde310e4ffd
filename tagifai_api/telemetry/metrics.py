"""Prometheus metrics: the exporter's HTTP metrics plus the model's own, right across workers.

prometheus-flask-exporter serves ``/metrics``; the HTTP families it would record by itself
(``tagifai_http_request_*``, same names, labels and buckets) are recorded by :class:`HttpMetrics`
from the access hook instead, which already knows each request's status and latency: the exporter's
own hooks looked their label children up on every request, a tenth of a request's CPU at 64
connections.

Under Gunicorn ``PROMETHEUS_MULTIPROC_DIR`` is set (by ``gunicorn.conf.py``) and every worker
writes its samples there; ``/metrics`` on any worker aggregates all of them. Outside Gunicorn
each app gets its own registry, so tests can build many apps in one process.
"""

from __future__ import annotations

import bisect
import os
import time
from importlib import metadata

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import MultiprocessInternalPrometheusMetrics

from tagifai_api.serving.batcher import BatchStats
from tagifai_api.telemetry.multiprocess import locked, read_locked

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 10_000)


def multiprocess() -> bool:
    """True under Gunicorn (or wherever the multiprocess directory is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ModelMetrics:
    """The model's metrics; an instance is also the serving layer's observer."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.predictions = Counter("tagifai_predictions", "Predictions served, by tag.",
                                   ["model_version", "tag"], registry=r)
        self.low_confidence = Counter("tagifai_low_confidence_predictions",
                                      "Predictions whose top probability fell below the threshold and became 'other'.",
                                      ["model_version"], registry=r)
        self.inference = Histogram("tagifai_inference_seconds", "Time of one model call (one micro-batch).",
                                   ["model_version"], buckets=_LATENCY_BUCKETS, registry=r)
        self.request_texts = Histogram("tagifai_request_texts", "Texts per /predict request.",
                                       buckets=_COUNT_BUCKETS, registry=r)
        self.batch_texts = Histogram("tagifai_batch_texts", "Texts per model call (micro-batch size).",
                                     buckets=_COUNT_BUCKETS, registry=r)
        self.batch_requests = Histogram("tagifai_batch_requests", "Requests coalesced into one model call.",
                                        buckets=_COUNT_BUCKETS, registry=r)
        self.queue_wait = Histogram("tagifai_batch_queue_wait_seconds", "Time a request's texts waited in the queue.",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.text_length = Histogram("tagifai_input_text_length_characters", "Length of each input text.",
                                     buckets=_LENGTH_BUCKETS, registry=r)
        self.errors = Counter("tagifai_errors", "Errors answered, by type.", ["type"], registry=r)
        self.feedback_count = Counter("tagifai_feedback", "Corrections received, by the version that predicted, "
                                      "its tag and the right one.", ["model_version", "predicted", "actual"],
                                      registry=r)
        # accuracy per version is right / (right + wrong); from tagifai_feedback_total it would need a
        # comparison of two labels of one series, which PromQL has no operator for
        self.feedback_outcomes = Counter("tagifai_feedback_outcomes", "Corrections received, by the version that "
                                         "predicted and whether its tag was right.", ["model_version", "outcome"],
                                         registry=r)
        self.log_dropped = Counter("tagifai_prediction_log_dropped", "Prediction log rows dropped (queue full, or "
                                   "the store slow or down); the requests themselves were answered.", registry=r)
        self.store_errors = Counter("tagifai_store_errors", "Failed reads and writes of the state store, by operation.",
                                    ["operation"], registry=r)
        self.jwks_failures = Counter("tagifai_oidc_jwks_fetch_failures", "Failed fetches of the identity "
                                     "provider's discovery document or signing keys (JWKS).", registry=r)
        self.auto_rollbacks = Counter("tagifai_auto_rollbacks", "Promoted defaults rolled back by themselves: live "
                                      "feedback showed them worse than the version they replaced.", registry=r)
        self.cache_hits = Counter("tagifai_cache_hits", "Prediction cache hits.", registry=r)
        self.cache_misses = Counter("tagifai_cache_misses", "Prediction cache misses.", registry=r)
        self.model_info = Gauge("tagifai_model_info", "The model each live worker serves (value 1).",
                                ["model_version", "sklearn_version"], multiprocess_mode="livemax", registry=r)
        self.model_loaded = Gauge("tagifai_model_load_timestamp_seconds", "When the worker loaded its model.",
                                  ["model_version"], multiprocess_mode="livemax", registry=r)
        self.fallback_gauge = Gauge("tagifai_model_fallback", "1 while a worker serves another version than the "
                                    "default, which it cannot load (0 once it can).", ["wanted", "serving"],
                                    multiprocess_mode="livemax", registry=r)
        self.start_time = Gauge("tagifai_process_start_time_seconds", "Start time of each live worker process.",
                                multiprocess_mode="liveall", registry=r)
        self.shadow_predictions = Counter(
            "tagifai_shadow_predictions", "Texts also scored by the shadow version, by whether its tag agreed.",
            ["model_version", "shadow_version", "outcome"], registry=r)
        self.shadow_drops = Counter(
            "tagifai_shadow_dropped", "Requests the shadow did not score: its queue was full, or it failed.",
            ["shadow_version", "reason"], registry=r)
        self.start_time.set(time.time())
        self._registry = r
        self._version: str | None = None
        self._by_tag: dict[tuple[str, str], Counter] = {}
        self._inference: dict[str, Histogram] = {}
        self._feedback_ready: set[str] = set()

    def model_loaded_now(self, version: str, loaded_at: float) -> None:
        """Record the default version this worker now serves (and that it no longer serves the previous one)."""
        sklearn = metadata.version("scikit-learn")
        if self._version is not None and self._version != version:
            self.model_info.labels(self._version, sklearn).set(0)
        self._version = version
        self.model_info.labels(version, sklearn).set(1)
        self.model_loaded.labels(version).set(loaded_at)
        # start the fallback counter at 0, so its rate (and the fallback ratio) exists before the first one
        self.low_confidence.labels(version)
        self._start_feedback(version)

    def fallback(self, wanted: str, serving: str, active: bool) -> None:
        """This worker serves ``serving`` because ``wanted`` (the default) cannot be loaded, or no longer."""
        self.fallback_gauge.labels(wanted, serving).set(1 if active else 0)

    def batch(self, stats: BatchStats, version: str) -> None:
        """One model call (batching or not) of ``version``."""
        inference = self._inference.get(version)
        if inference is None:  # labels() checks and looks up its arguments on every call
            inference = self._inference[version] = self.inference.labels(version)
        inference.observe(stats.seconds)
        self.batch_texts.observe(stats.texts)
        self.batch_requests.observe(stats.jobs)
        observe_many(self.queue_wait, stats.queue_wait)

    def cache(self, hits: int, misses: int) -> None:
        """Cache look-ups of one request."""
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)

    def request(self, texts: list[str], results: list[dict], version: str) -> None:
        """A /predict request served by ``version``.

        Each sample is written once per request, not once per text: under Gunicorn every write is
        a locked write to a shared file, and a 100-text request made 200 of them.
        """
        self.request_texts.observe(len(texts))
        observe_many(self.text_length, [len(text) for text in texts])
        tags: dict[str, int] = {}
        low = 0
        for result in results:
            tag = result["predicted_tag"]
            tags[tag] = tags.get(tag, 0) + 1
            low += result["low_confidence"]
        for tag, count in tags.items():
            counter = self._by_tag.get((version, tag))
            if counter is None:
                counter = self._by_tag[(version, tag)] = self.predictions.labels(version, tag)
            counter.inc(count)
        if low:
            self.low_confidence.labels(version).inc(low)
        if version not in self._feedback_ready and results:
            self._feedback_ready.add(version)
            self._start_feedback(version, tuple(results[0].get("probabilities", ())))

    def shadow(self, model_version: str, shadow_version: str, agree: int, disagree: int) -> None:
        """Texts the shadow scored after ``model_version`` answered them."""
        if agree:
            self.shadow_predictions.labels(model_version, shadow_version, "agree").inc(agree)
        if disagree:
            self.shadow_predictions.labels(model_version, shadow_version, "disagree").inc(disagree)

    def shadow_dropped(self, shadow_version: str, reason: str, count: int) -> None:
        """Requests the shadow did not score."""
        self.shadow_drops.labels(shadow_version, reason).inc(count)

    def shadow_totals(self, shadow_version: str) -> dict[str, int]:
        """Agreeing, disagreeing and dropped counts for ``shadow_version``, summed over every worker
        (under Gunicorn, read from the shared multiprocess files, so each worker gives the same answer)."""
        totals = {"agree": 0, "disagree": 0, "dropped": 0}
        for metric in _collect(self._registry, (self.shadow_predictions, self.shadow_drops)):
            for sample in metric.samples:
                if not sample.name.endswith("_total") or sample.labels.get("shadow_version") != shadow_version:
                    continue
                if metric.name == "tagifai_shadow_predictions":
                    totals[sample.labels["outcome"]] += int(sample.value)
                elif metric.name == "tagifai_shadow_dropped":
                    totals["dropped"] += int(sample.value)
        return totals

    def _start_feedback(self, version: str, classes: tuple[str, ...] = ()) -> None:
        """Start ``version``'s feedback series at 0, for every pair of its ``classes`` too: rate() and
        increase() see a series only from its first scrape, so one born at 1 would never count its
        first correction (and an accuracy or a confusion matrix over a window would leave it out)."""
        for outcome in ("right", "wrong"):
            self.feedback_outcomes.labels(version, outcome)
        for predicted in classes:
            for actual in classes:
                self.feedback_count.labels(version, predicted, actual)

    def feedback(self, version: str, predicted: str, actual: str) -> None:
        """A correction of one of ``version``'s predictions: it said ``predicted``, the right tag is ``actual``."""
        self._start_feedback(version)  # the other outcome at 0 too, for a version this worker never served
        self.feedback_count.labels(version, predicted, actual).inc()
        self.feedback_outcomes.labels(version, "right" if predicted == actual else "wrong").inc()

    def log_dropped_rows(self, count: int) -> None:
        self.log_dropped.inc(count)

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def jwks_fetch_failed(self) -> None:
        self.jwks_failures.inc()
    def auto_rollback(self) -> None:
        self.auto_rollbacks.inc()

    def error(self, kind: str) -> None:
        """An error answered to a client."""
        self.errors.labels(kind).inc()


class HttpMetrics:
    """The exporter's default HTTP families, with each label combination's children cached.

    As the exporter records them: ``_duration_seconds`` by method, endpoint (``None`` for an
    unmatched path) and status; ``_total`` by method and status; ``_exceptions_total`` for an
    exception no error handler answered; and nothing for a view marked ``do_not_track`` (``/metrics``).
    """

    def __init__(self, exporter: PrometheusMetrics, prefix: str, registry: CollectorRegistry | None) -> None:
        exporter.info(f"{prefix}_exporter_info", "Information about the Prometheus Flask exporter",
                      version=exporter.version)
        self.duration = Histogram(f"{prefix}_http_request_duration_seconds", "Flask HTTP request duration in seconds",
                                  ("method", "endpoint", "status"), registry=registry)
        self.total = Counter(f"{prefix}_http_request_total", "Total number of HTTP requests",
                             ("method", "status"), registry=registry)
        self.exceptions = Counter(f"{prefix}_http_request_exceptions_total",
                                  "Total number of HTTP requests which resulted in an exception",
                                  ("method", "status"), registry=registry)
        self._children: dict[tuple[str, str | None, int], tuple] = {}

    def request(self, method: str, endpoint: str | None, status: int, seconds: float) -> None:
        """One answered request."""
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.duration.labels(method, endpoint, status),
                                              self.total.labels(method, status))
        children[0].observe(max(seconds, 0.0))
        children[1].inc()

    def exception(self, method: str) -> None:
        """A request that ended in an exception no handler answered (answered 500 by Flask)."""
        self.exceptions.labels(method, 500).inc()


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """Exactly ``histogram.observe(a) for a in amounts``, with one write per bucket touched and one
    for the sum rather than two per amount.

    prometheus_client has no bulk observe; this uses the children's ``_upper_bounds``, ``_buckets``
    and ``_sum`` (prometheus_client 0.26, pinned; tests/test_metrics.py checks it against observe()).
    """
    if not amounts:
        return
    histogram._raise_if_not_observable()
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for amount in amounts:
        counts[bisect.bisect_left(bounds, amount)] += 1  # the first bound >= amount, as observe() picks
    histogram._sum.inc(sum(amounts))
    for bucket, count in zip(histogram._buckets, counts):
        if count:
            bucket.inc(count)


def _collect(registry: CollectorRegistry | None, own: tuple) -> list:
    if registry is not None:  # one process: its own counters are the whole story
        return [m for c in own for m in c.collect()]
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    with locked(directory, exclusive=False):  # never mid-fold of a dead worker's samples
        return list(MultiProcessCollector(None, directory).collect())


PREFIX = "tagifai"


class _MultiprocessExporter(MultiprocessInternalPrometheusMetrics):
    """The exporter under Gunicorn: every scrape reads all workers' files, as the library's does,
    and also asks the collectors added with :func:`add_scrape_collector` (the library builds each
    scrape's registry itself, leaving no place to register one)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scrape_collectors: list = []

    def generate_metrics(self, accept_header=None, names=None):
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in self.scrape_collectors:
            registry.register(collector)
        encode, content_type = choose_encoder(accept_header)
        return encode(registry.restricted_registry(names) if names else registry).decode("utf-8"), content_type


def add_scrape_collector(exporter: PrometheusMetrics, collector) -> None:
    """Have every scrape of ``/metrics`` also collect ``collector`` (a prometheus_client collector,
    with a ``describe()`` that reads nothing), in this process, at scrape time: for values computed
    from shared state (the store) rather than counted by each worker."""
    if isinstance(exporter, _MultiprocessExporter):
        exporter.scrape_collectors.append(collector)
    else:
        exporter.registry.register(collector)


def init_metrics(app: Flask) -> tuple[ModelMetrics, HttpMetrics, PrometheusMetrics]:
    """Attach the exporter (``/metrics``) to ``app``; return the model and HTTP metrics (the access
    hook, :mod:`tagifai_api.web.access`, records the HTTP ones) and the exporter."""
    if multiprocess():
        exporter = _MultiprocessExporter(app=None, export_defaults=False, registry=None,
                                         metrics_decorator=read_locked)
        registry = None  # samples go to the multiprocess files; /metrics reads them all
    else:
        registry = CollectorRegistry(auto_describe=True)
        exporter = PrometheusMetrics(app=None, export_defaults=False, registry=registry)
    exporter.init_app(app)
    return ModelMetrics(registry), HttpMetrics(exporter, PREFIX, registry), exporter
