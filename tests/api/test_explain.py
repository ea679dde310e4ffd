"""POST /predict with ``"explain": true``: exact explanations, outside the micro-batcher and the cache."""

import pytest

from tests.helpers import LESSON_TEXTS as LESSON
from tests.helpers import check_envelope


def post(client, texts, **extra):
    return client.post("/predict", json={"texts": [{"text": t} for t in texts], **extra})


def test_explained_predictions_are_the_plain_ones_plus_an_exact_explanation(client):
    texts = LESSON + ["MLOps: CI/CD for models, with https://example.com/docs and Kubernetes!", "hello"]
    plain = check_envelope(post(client, texts), 200, "POST")["data"]["predictions"]
    explained = check_envelope(post(client, texts, explain=True), 200, "POST")["data"]["predictions"]
    assert [p["predicted_tag"] for p in explained] == [p["predicted_tag"] for p in plain]
    assert [p["predicted_tag"] for p in explained[:2]] == ["natural-language-processing", "computer-vision"]
    for p, q in zip(plain, explained):
        assert "explanation" not in p
        assert q["probabilities"] == pytest.approx(p["probabilities"], abs=1e-12)
        e = q["explanation"]
        top = max(q["probabilities"], key=q["probabilities"].get)
        assert e["tag"] == top
        assert e["intercept"] + sum(w["contribution"] for w in e["words"]) == pytest.approx(e["score"], abs=1e-9)
        for w in e["words"]:
            assert q["input_text"][w["start"]:w["end"]] == w["text"]
    link = [w for w in explained[2]["explanation"]["words"] if w["text"].startswith("https://")]
    assert link == [{"text": "https://example.com/docs", "start": 30, "end": 54, "contribution": 0.0,
                     "dropped": True, "reason": "link"}]


def test_lesson_example_explains_its_tags_by_the_words_one_expects(client):
    preds = post(client, LESSON, explain=True).get_json()["data"]["predictions"]
    best = [max((w for w in p["explanation"]["words"] if not w["dropped"]), key=lambda w: w["contribution"])
            for p in preds]
    assert best[0]["text"] == "transformers"
    assert best[1]["text"] in {"image", "adversarial", "Generative"}
    with_ = next(w for w in preds[0]["explanation"]["words"] if w["text"] == "with")
    assert with_ == {"text": "with", "start": 18, "end": 22, "contribution": 0.0, "dropped": True,
                     "reason": "stop_word"}


def test_low_confidence_answer_explains_the_top_class_and_says_so(client, app):
    threshold = app.extensions["tagifai"].service.model.args["threshold"]
    p = post(client, ["hello"], explain=True).get_json()["data"]["predictions"][0]
    assert p["low_confidence"] and p["predicted_tag"] == "other"
    e = p["explanation"]
    assert e["tag"] == max(p["probabilities"], key=p["probabilities"].get) != "other"
    assert "other" in e["note"] and f"{threshold:g}" in e["note"]
    confident = post(client, LESSON[:1], explain=True).get_json()["data"]["predictions"][0]
    assert "note" not in confident["explanation"]


@pytest.mark.parametrize("value", ["true", "yes", 0, 1, 1.5, None, [], {}])
def test_explain_must_be_a_boolean(client, value):
    body = check_envelope(post(client, ["text"], explain=value), 422, "POST")
    assert body["data"]["errors"]["explain"]


def test_explain_false_is_the_plain_answer(client):
    assert post(client, LESSON, explain=False).get_json()["data"] == post(client, LESSON).get_json()["data"]


def test_explained_requests_never_use_the_batcher_or_the_cache(make_app, monkeypatch):
    client = make_app(BATCHING=True, CACHE_SIZE=100).test_client()
    service = client.application.extensions["tagifai"].service

    def no_batch(*args, **kwargs):
        raise AssertionError("an explained request went through the micro-batcher")

    monkeypatch.setattr(service.batcher, "submit", no_batch)
    explained = check_envelope(post(client, LESSON, explain=True), 200, "POST")["data"]
    assert len(service.cache) == 0
    assert service.batcher._arriving == 0  # it announced itself, then withdrew: no batch waits for it
    monkeypatch.undo()
    plain = check_envelope(post(client, LESSON), 200, "POST")["data"]
    assert len(service.cache) == 2
    assert explained["model_version"] == plain["model_version"]
    for p, q in zip(plain["predictions"], explained["predictions"]):
        assert q.keys() == p.keys() | {"explanation"}
        assert q["probabilities"] == pytest.approx(p["probabilities"], abs=1e-12)
        assert [q[k] for k in ("input_text", "predicted_tag", "low_confidence")] == \
            [p[k] for k in ("input_text", "predicted_tag", "low_confidence")]
    # both texts are in the cache now: an explained request is still explained, not read from it
    assert check_envelope(post(client, LESSON, explain=True), 200, "POST")["data"] == explained


def test_largest_request_is_explained(client):
    texts = [("Transfer learning with transformers, https://x.io and GANs! " * 200)[:10_000]] * 100
    preds = check_envelope(post(client, texts, explain=True), 200, "POST")["data"]["predictions"]
    assert len(preds) == 100
    e = preds[0]["explanation"]
    assert e["intercept"] + sum(w["contribution"] for w in e["words"]) == pytest.approx(e["score"], abs=1e-9)


def _failing_hook(fn, items):
    raise RuntimeError("secret internals")


def test_explainer_failure_is_a_500_envelope_and_the_worker_keeps_serving(make_app, model_hook):
    app = make_app()
    model_hook(app.extensions["tagifai"].service, _failing_hook)
    client = app.test_client()
    response = post(client, LESSON, explain=True)
    body = check_envelope(response, 500, "POST")
    assert "secret" not in response.get_data(as_text=True)
    assert "request id" in body["message"]


def test_explained_request_waiting_too_long_is_a_504(make_app):
    client = make_app(PREDICT_TIMEOUT_MS=50).test_client()
    service = client.application.extensions["tagifai"].service
    with service._explain_lock:  # another explained request holds this worker's explainer
        check_envelope(post(client, LESSON, explain=True), 504, "POST")
    assert post(client, LESSON, explain=True).status_code == 200


def test_openapi_describes_explanations(client):
    spec = client.get("/openapi.json").get_json()
    schemas = spec["components"]["schemas"]
    assert schemas["PredictRequest"]["properties"]["explain"]["type"] == "boolean"
    prediction = next(s for name, s in schemas.items() if name.startswith("Prediction") and "explanation" in
                      s.get("properties", {}))
    assert prediction["properties"]["explanation"]
    explanation = schemas["Explanation"]["properties"]
    assert {"tag", "score", "intercept", "words", "top", "note"} <= set(explanation)
    assert {"text", "start", "end", "contribution", "dropped", "reason"} <= set(schemas["Word"]["properties"])
