"""The model metrics' per-request writes give exactly what one write per text would."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from tagifai_api.telemetry.metrics import ModelMetrics, observe_many


def samples(registry: CollectorRegistry, name: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() if m.name == name for s in m.samples if not s.name.endswith("_created")}


def test_observe_many_equals_one_observe_per_amount():
    amounts = [0, 1, 15, 16, 17, 64, 64, 1000, 4096, 4097, 10_000, 10_001, 123_456, 2.5, -3]
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", ["v"], buckets=(16, 64, 1024, 4096, 10_000), registry=one)
    h2 = Histogram("h", "h", ["v"], buckets=(16, 64, 1024, 4096, 10_000), registry=bulk)
    for a in amounts:
        h1.labels("x").observe(a)
    observe_many(h2.labels("x"), amounts)
    observe_many(h2.labels("x"), [])
    assert samples(one, "h") == samples(bulk, "h")
    assert samples(bulk, "h")[("h_count", (("v", "x"),))] == len(amounts)
    assert math.isclose(samples(bulk, "h")[("h_sum", (("v", "x"),))], sum(amounts))


def test_a_request_counts_every_text_once():
    registry = CollectorRegistry()
    metrics = ModelMetrics(registry)
    texts = ["a" * n for n in (3, 20, 20, 700, 5000)]
    tags = ["mlops", "other", "mlops", "computer-vision", "other"]
    results = [{"predicted_tag": t, "low_confidence": t == "other"} for t in tags]
    metrics.request(texts, results, "v1")
    metrics.request(texts[:1], results[:1], "v1")
    predictions = samples(registry, "tagifai_predictions")
    assert predictions == {
        ("tagifai_predictions_total", (("model_version", "v1"), ("tag", "mlops"))): 3.0,
        ("tagifai_predictions_total", (("model_version", "v1"), ("tag", "other"))): 2.0,
        ("tagifai_predictions_total", (("model_version", "v1"), ("tag", "computer-vision"))): 1.0,
    }
    assert samples(registry, "tagifai_low_confidence_predictions")[
        ("tagifai_low_confidence_predictions_total", (("model_version", "v1"),))] == 2.0
    lengths = samples(registry, "tagifai_input_text_length_characters")
    assert lengths[("tagifai_input_text_length_characters_count", ())] == 6
    assert lengths[("tagifai_input_text_length_characters_sum", ())] == 3 + 20 + 20 + 700 + 5000 + 3
    assert lengths[("tagifai_input_text_length_characters_bucket", (("le", "16.0"),))] == 2
    assert lengths[("tagifai_input_text_length_characters_bucket", (("le", "32.0"),))] == 4
    assert lengths[("tagifai_input_text_length_characters_bucket", (("le", "+Inf"),))] == 6


HTTP_FAMILIES = ("tagifai_http_request_duration_seconds", "tagifai_http_request", "tagifai_http_request_exceptions")


def _http_samples(registry: CollectorRegistry) -> dict:
    """Counts and label sets of the HTTP families (durations themselves differ between recorders)."""
    out = {}
    for m in registry.collect():
        if m.name not in HTTP_FAMILIES:
            continue
        for s in m.samples:
            if s.name.endswith(("_created", "_sum")):
                continue
            value = s.value if not s.name.endswith("_bucket") else None  # which bucket depends on timing
            out[(s.name, tuple(sorted(s.labels.items())))] = value
    return out


def test_http_metrics_are_what_the_exporter_itself_records(make_app):
    from prometheus_flask_exporter import PrometheusMetrics

    app = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("an error no handler answers")

    # the exporter's own hooks, on the same app, recording into a registry of their own
    reference = CollectorRegistry()
    PrometheusMetrics(app=None, path=None, group_by="endpoint", defaults_prefix="tagifai",
                      registry=reference).init_app(app)
    client = app.test_client()
    for _ in range(3):
        assert client.post("/predict", json={"texts": [{"text": "image classification"}]}).status_code == 200
    assert client.post("/predict", json={"texts": []}).status_code == 422
    assert client.get("/no-such-route").status_code == 404
    assert client.delete("/predict").status_code == 405
    assert client.get("/boom").status_code == 500
    assert client.get("/metrics").status_code == 200  # not tracked, as the exporter does not track itself
    ours = _http_samples(app.extensions["tagifai"].exporter.registry)
    assert ours == _http_samples(reference)
    assert ours[("tagifai_http_request_duration_seconds_count",
                 (("endpoint", "predict.predict"), ("method", "POST"), ("status", "200")))] == 3
    assert ours[("tagifai_http_request_duration_seconds_count",
                 (("endpoint", "None"), ("method", "GET"), ("status", "404")))] == 1
    assert ours[("tagifai_http_request_exceptions_total", (("method", "GET"), ("status", "500")))] == 1
    assert not any(dict(labels).get("endpoint") == "prometheus_metrics" for _, labels in ours)
