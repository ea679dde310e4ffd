"""Every failure answers in the envelope: never HTML, never a traceback, and the worker lives on."""

import threading
import time

import pytest

from tests.helpers import LESSON, check_envelope


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/nope", {}, 404),
        ("get", "/predict", {}, 405),
        ("delete", "/", {}, 405),
        ("post", "/predict", {"data": "texts=1", "content_type": "application/x-www-form-urlencoded"}, 415),
        ("post", "/predict", {"data": "hello"}, 415),
        ("post", "/predict", {"data": "{not json", "content_type": "application/json"}, 400),
        ("post", "/predict", {"data": "", "content_type": "application/json"}, 400),
        ("post", "/predict", {"json": {"texts": []}}, 422),
    ],
)
def test_error_envelopes(client, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    body = check_envelope(response, status, method.upper())
    assert "<" not in body["message"] and "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/args//threshold", "/health//live", "/models//default"])
def test_doubled_slashes_are_a_404_envelope_not_an_html_redirect(client, path):
    """Werkzeug would answer 308 in HTML, to a Location built from the (forwarded, client-set) host."""
    response = client.get(path, headers={"X-Forwarded-Host": "elsewhere.example"})
    check_envelope(response, 404)
    assert "Location" not in response.headers


def test_405_lists_allowed_methods(client):
    response = client.get("/predict")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_413_unread(make_app):
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    body = check_envelope(client.post("/predict", data="x" * 2000, content_type="application/json"), 413, "POST")
    assert "larger" in body["message"]


def _failing_hook(predict, items):
    if any("explode" in t for t in items):
        raise RuntimeError("secret internal detail")
    return predict(items)


@pytest.mark.parametrize("batching", [True, False])
def test_inference_exception_is_500_without_internals_and_the_app_keeps_serving(make_app, model_hook, batching):
    app = make_app(BATCHING=batching, CACHE_SIZE=0)
    model_hook(app.extensions["tagifai"].service, _failing_hook)
    client = app.test_client()
    response = client.post("/predict", json={"texts": [{"text": "explode please"}]},
                           headers={"X-Request-ID": "req-42"})
    body = check_envelope(response, 500, "POST")
    assert body["request-id"] == "req-42"
    assert "secret" not in response.get_data(as_text=True)
    assert "request id" in body["message"]
    assert client.post("/predict", json=LESSON).status_code == 200


def test_unexpected_exception_in_a_view_is_a_500_envelope_logged_once(make_app, caplog):
    app = make_app()

    @app.get("/boom")
    def boom():
        raise KeyError("internal")

    with caplog.at_level("ERROR"):
        body = check_envelope(app.test_client().get("/boom"), 500)
    assert "internal" not in body["message"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is KeyError]
    assert len(logged) == 1
    assert logged[0].request_id == body["request-id"]


def test_no_model_is_503(make_app, tmp_path):
    client = make_app(ARTIFACTS_DIR=str(tmp_path)).test_client()
    for path in ("/performance", "/args", "/args/threshold"):
        body = check_envelope(client.get(path), 503)
        assert "not loaded" in body["message"]
    body = check_envelope(client.post("/predict", json=LESSON), 503, "POST")
    assert "no default model" in body["message"]
    check_envelope(client.get("/"), 200)


class GatedHook:
    """A model call that signals it has started and then holds until released (no sleeps, no timing)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, predict, items):
        self.entered.set()
        assert self.release.wait(30)
        return predict(items)


def _post_in_thread(app, i: int, out: list) -> threading.Thread:
    def call():
        r = app.test_client().post("/predict", json={"texts": [{"text": f"text number {i}"}]})
        out.append((r.status_code, r.headers.get("Retry-After"), r.get_json()["status-code"]))

    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t


def _wait_queued(app, texts: int) -> None:
    batcher = app.extensions["tagifai"].service.batcher
    deadline = time.monotonic() + 30  # bounds a broken run only
    while batcher._queued_items < texts:
        assert time.monotonic() < deadline
        time.sleep(0.002)


def test_full_queue_is_503_with_retry_after(make_app, model_hook):
    hook = GatedHook()
    app = make_app(BATCH_QUEUE_SIZE=1, CACHE_SIZE=0)
    model_hook(app.extensions["tagifai"].service, hook)
    statuses: list = []
    running = _post_in_thread(app, 0, statuses)  # holds the model
    assert hook.entered.wait(30)
    queued = _post_in_thread(app, 1, statuses)  # fills the one-text queue
    _wait_queued(app, 1)
    refused = _post_in_thread(app, 2, statuses)
    refused.join(30)
    assert statuses == [(503, "1", 503)]
    hook.release.set()
    for t in (running, queued):
        t.join(30)
    assert sorted(statuses) == [(200, None, 200), (200, None, 200), (503, "1", 503)]


def test_deadline_passed_in_queue_is_504(make_app, model_hook):
    hook = GatedHook()
    app = make_app(PREDICT_TIMEOUT_MS=100, CACHE_SIZE=0)
    model_hook(app.extensions["tagifai"].service, hook)
    results: list = []
    running = _post_in_thread(app, 0, results)
    assert hook.entered.wait(30)
    late = _post_in_thread(app, 1, results)  # queued behind a model call that does not end
    late.join(30)
    assert [r[0] for r in results] == [504]
    hook.release.set()
    running.join(30)
    assert sorted(r[0] for r in results) == [200, 504]


@pytest.mark.parametrize("path", ["/", "/predict", "/args/threshold"])
def test_options_is_an_envelope_listing_the_methods(client, path):
    response = client.options(path)
    body = check_envelope(response, 200, "OPTIONS")
    assert "OPTIONS" in body["data"]["allow"]
    assert set(body["data"]["allow"]) == {m.strip() for m in response.headers["Allow"].split(",")}
