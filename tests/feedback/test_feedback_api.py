"""The prediction log and feedback through the test client: every logged field in each mode, the two
kinds of correction, corrections of corrections, who may send them, and bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.serving.predlog import text_hash
from tests.helpers import add_key, check_envelope, open_registry, renamed_classes

TEXTS = ["YOLO object detection in images", "BERT for question answering", "Kubeflow pipelines on Kubernetes"]


def _log(app):
    return app.extensions["tagifai"].service.prediction_log


def _store(app):
    return app.extensions["tagifai"].service.registry.store


def _predict(client, texts, request_id, **body):
    r = client.post("/predict", json={"texts": [{"text": t} for t in texts], **body},
                    headers={"X-Request-ID": request_id})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


@pytest.fixture
def logged(make_app):
    """An app that keeps texts in its log, and a predict key's header."""
    app = make_app(PREDICTION_LOG="texts")
    return app, {"Authorization": f"Bearer {add_key(app, 'reader', 'predict')}"}


@pytest.mark.parametrize("mode", ["meta", "texts"])
def test_every_answered_text_is_logged_once_with_every_field(make_app, mode):
    app = make_app(PREDICTION_LOG=mode)
    client = app.test_client()
    data = _predict(client, TEXTS, "req-1")
    _predict(client, TEXTS[:1], "req-2", explain=True)
    _log(app).flush()
    rows = list(_store(app).predictions())
    assert [(r["request_id"], r["position"]) for r in rows] == [("req-1", 0), ("req-1", 1), ("req-1", 2), ("req-2", 0)]
    for row, text, answer in zip(rows, TEXTS + TEXTS[:1], data["predictions"] + data["predictions"][:1], strict=True):
        assert row["model_version"] == data["model_version"]
        assert row["predicted"] == answer["predicted_tag"]
        assert row["confidence"] == pytest.approx(answer["confidence"])
        assert row["low_confidence"] is answer["low_confidence"]
        assert row["text_length"] == len(text)
        assert row["text_hash"] == text_hash(text)
        assert row["text"] == (text if mode == "texts" else None)
        assert row["shadow_version"] is None and row["shadow_predicted"] is None
        assert time.time() - 60 < row["at"] <= time.time()
    # "Kubeflow pipelines on Kubernetes": three words the model reads ("on" is a stop word)
    assert rows[2]["tokens"] == 3 and 0 <= rows[2]["unknown_tokens"] <= 3


def test_words_the_model_does_not_know_are_counted(make_app):
    app = make_app()
    _predict(app.test_client(), ["zzqx blorft quantum chromodynamics", "object detection"], "r")
    _log(app).flush()
    first, second = list(_store(app).predictions())
    assert (first["tokens"], first["unknown_tokens"]) == (4, 4)
    assert (second["tokens"], second["unknown_tokens"]) == (2, 0)


def test_with_the_log_off_nothing_is_written(make_app):
    app = make_app(PREDICTION_LOG="off")
    _predict(app.test_client(), TEXTS, "r")
    _log(app).flush()  # it only deletes old rows
    assert not _log(app).record and list(_store(app).predictions()) == []


def test_the_shadow_tag_is_logged_when_a_shadow_ran(registry_root, make_app):
    root, first, second = registry_root
    app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0)
    admin = {"Authorization": f"Bearer {add_key(app, 'ops', 'admin')}"}
    client = app.test_client()
    assert client.put("/models/shadow", json={"version": second}, headers=admin).status_code == 200
    _predict(client, TEXTS, "shadowed")
    service = app.extensions["tagifai"].service
    service.shadow.close()  # scores what is queued, then the rows are queued for the log
    _log(app).flush()
    rows = list(_store(app).predictions())
    assert len(rows) == 3 and {r["shadow_version"] for r in rows} == {second}
    expected = [p["predicted_tag"] for p in service.get(second).predictor.predict(TEXTS)]
    assert [r["shadow_predicted"] for r in rows] == expected


def test_an_unreachable_store_drops_rows_never_the_request(make_app):
    app = make_app()
    log = _log(app)
    log.store = type(log.store)("postgresql+psycopg://nobody@127.0.0.1:1/none")  # the store goes away
    client = app.test_client()
    _predict(client, TEXTS, "r")
    log.flush()
    assert log.dropped == 3 and log.written == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    dropped = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "tagifai_prediction_log_dropped_total"]
    assert dropped == [3.0]


def test_a_full_queue_drops_rows_and_counts_them(make_app):
    app = make_app()
    log = _log(app)
    log.queue_bytes = 1
    client = app.test_client()
    _predict(client, TEXTS, "a")  # queued: the queue was empty
    _predict(client, TEXTS, "b")  # the queue holds more than its bound: dropped
    log.flush()
    assert log.dropped == 3 and [r["request_id"] for r in _store(app).predictions()] == ["a"] * 3


def test_rows_past_the_retention_are_deleted(make_app):
    app = make_app(PREDICTION_LOG_DAYS=1)
    _predict(app.test_client(), TEXTS[:1], "new")
    _log(app).flush()
    item = ("mlops", 0.9, False, None, 10, 2, 0, "0" * 64, None)
    _store(app).log_requests([(time.time() - 2 * 86400, "old", "v1", None, [item])])
    _log(app).purge()
    assert [r["request_id"] for r in _store(app).predictions()] == ["new"]


def test_both_kinds_of_feedback_and_a_correction_of_a_correction(logged):
    app, key = logged
    client = app.test_client()
    data = _predict(client, TEXTS, "req-1")
    _log(app).flush()
    r = client.post("/feedback", headers=key, json={"feedback": [
        {"request_id": "req-1", "index": 2, "tag": "mlops"},
        {"request_id": "req-1", "tag": "natural-language-processing"},  # index 0 by default
        {"request_id": "req-1", "index": 7, "tag": "mlops"},
        {"request_id": "nope", "tag": "mlops"},
        {"text": "A feature store for online serving", "tag": "mlops"},
    ]})
    body = check_envelope(r, 200, "POST")["data"]
    version = data["model_version"]
    assert body["recorded"] == 3
    assert [i["status"] for i in body["items"]] == ["created", "created", "unknown_index", "unknown_request", "created"]
    assert body["items"][0] == {"status": "created", "model_version": version,
                                "predicted": data["predictions"][2]["predicted_tag"], "text_kept": True}
    # the same prediction corrected again: one row, the latest answer
    again = client.post("/feedback", headers=key, json={"feedback": [{"request_id": "req-1", "index": 2,
                                                                       "tag": "other"}]})
    assert check_envelope(again, 200, "POST")["data"]["items"][0]["status"] == "updated"
    outcomes = _store(app).feedback_outcomes(version)
    assert sorted(a for _, a in outcomes) == ["natural-language-processing", "other"]
    labelled = {row["text"]: (row["tag"], row["source"]) for row in _store(app).labelled_texts()}
    assert labelled == {TEXTS[2]: ("other", "prediction"), TEXTS[0]: ("natural-language-processing", "prediction"),
                        "A feature store for online serving": ("mlops", "text")}


def test_in_meta_mode_a_correction_counts_but_its_text_was_not_kept(make_app):
    app = make_app(PREDICTION_LOG="meta")
    key = {"X-API-Key": add_key(app, "reader", "predict")}
    client = app.test_client()
    _predict(client, TEXTS[:1], "m")
    _log(app).flush()
    body = client.post("/feedback", headers=key, json={"feedback": [{"request_id": "m", "tag": "mlops"}]}).get_json()
    assert body["data"]["items"][0]["text_kept"] is False
    assert list(_store(app).labelled_texts()) == []
    assert len(_store(app).feedback_outcomes(body["data"]["items"][0]["model_version"])) == 1


def test_live_accuracy_by_hand_in_quality_and_in_the_listing(logged):
    app, key = logged
    client = app.test_client()
    data = _predict(client, TEXTS, "q")
    _log(app).flush()
    predicted = [p["predicted_tag"] for p in data["predictions"]]
    # the first two confirmed, the third corrected to a tag it was not given
    wrong = next(t for t in ("mlops", "other") if t != predicted[2])
    feedback = [{"request_id": "q", "index": i, "tag": predicted[i]} for i in range(2)]
    feedback.append({"request_id": "q", "index": 2, "tag": wrong})
    assert client.post("/feedback", headers=key, json={"feedback": feedback}).status_code == 200
    q = check_envelope(client.get("/models/default/quality"), 200)["data"]
    assert q["model_version"] == data["model_version"] and q["test_split_f1"] > 0
    assert q["all"]["count"] == 3 and q["all"]["correct"] == 2 and q["all"]["accuracy"] == round(2 / 3, 4)
    assert q["all"]["confusion"][wrong][predicted[2]] == 1
    assert q["recent"]["days"] == 7 and q["recent"]["count"] == 3
    listing = client.get("/models").get_json()["data"]["models"]
    assert [m["live"] for m in listing if m["version"] == data["model_version"]] == [{"feedback": 3,
                                                                                    "accuracy": round(2 / 3, 4)}]
    metrics = client.get("/metrics").get_data(as_text=True)
    counted = {(s.labels["predicted"], s.labels["actual"]): s.value for f in text_string_to_metric_families(metrics)
               for s in f.samples if s.name == "tagifai_feedback_total"}
    assert counted[(predicted[2], wrong)] == 1.0 and sum(counted.values()) == 3.0
    assert check_envelope(client.get("/models/v0/quality"), 404)["data"]["valid"]
    assert client.get("/models/default/quality?days=0").status_code == 422


def test_quality_reads_a_version_from_its_files_without_loading_it(registry_root, make_app):
    """Anyone may GET a quality report: it must not load a version (which could push out a loaded one),
    and a version whose model files are damaged still has its corrections counted."""
    root, _, other = registry_root
    app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0)
    service = app.extensions["tagifai"].service
    _store(app).record_feedback([{"subject": "p:r:0", "at": time.time(), "source": "prediction", "request_id": "r",
                                  "position": 0, "model_version": other, "predicted": "mlops", "tag": "other",
                                  "text_hash": "0" * 32, "text": None, "key_name": None}])
    labels = json.loads((root / other / "labels.json").read_text())
    f1 = json.loads((root / other / "performance.json").read_text())["overall"]["f1"]
    client = app.test_client()
    assert other not in service.loaded_versions()
    q = check_envelope(client.get(f"/models/{other}/quality"), 200)["data"]
    assert (q["model_version"], q["test_split_f1"], q["all"]["count"]) == (other, f1, 1)
    assert list(q["all"]["per_class"]) == labels
    assert other not in service.loaded_versions()
    (root / other / "model.npz").write_bytes(b"damaged")
    q = check_envelope(client.get(f"/models/{other}/quality"), 200)["data"]
    assert (q["test_split_f1"], q["all"]["count"]) == (f1, 1)
    (root / other / "performance.json").write_text("{}")  # its metadata too: the report without them
    q = check_envelope(client.get(f"/models/{other}/quality"), 200)["data"]
    assert (q["test_split_f1"], q["all"]["count"], q["all"]["confusion"]["other"]["mlops"]) == (None, 1, 1)
    assert other not in service.loaded_versions()


@pytest.mark.parametrize("mode, status", [("admin", 401), ("all", 401), ("off", 200)])
def test_feedback_needs_a_key_in_every_mode_but_off(make_app, mode, status):
    app = make_app(AUTH=mode)
    add_key(app, "reader", "predict")
    r = app.test_client().post("/feedback", json={"feedback": [{"text": "a text", "tag": "mlops"}]})
    check_envelope(r, status, "POST")


def test_each_item_records_the_key_that_sent_it(logged):
    app, key = logged
    assert app.test_client().post("/feedback", headers=key, json={"feedback": [{"text": "x y", "tag": "mlops"}]}
                                  ).status_code == 200
    from tagifai_api.store import tables
    with _store(app).engine.connect() as conn:
        assert conn.execute(tables.feedback.select()).mappings().one()["key_name"] == "reader"


@pytest.mark.parametrize("body, path", [
    ({"feedback": [{"text": "x", "tag": "robots"}]}, ("feedback", "0", "tag")),
    ({"feedback": [{"text": "x", "tag": ""}]}, ("feedback", "0", "tag")),
    ({"feedback": [{"request_id": "r", "tag": "t" * 65}]}, ("feedback", "0", "tag")),
    ({"feedback": [{"request_id": "r", "tag": "mlops\x00"}]}, ("feedback", "0", "tag")),
    ({"feedback": [{"text": "x", "request_id": "r", "tag": "mlops"}]}, ("feedback", "0", "_schema")),
    ({"feedback": [{"tag": "mlops"}]}, ("feedback", "0", "_schema")),
    ({"feedback": [{"text": "   ", "tag": "mlops"}]}, ("feedback", "0", "text")),
    ({"feedback": [{"text": "x" * 10_001, "tag": "mlops"}]}, ("feedback", "0", "text")),
    # NUL: PostgreSQL's text columns cannot hold it (the store answered 503)
    ({"feedback": [{"text": "a\x00b", "tag": "mlops"}]}, ("feedback", "0", "text")),
    ({"feedback": [{"text": "ok", "tag": "mlops"}, {"request_id": "r\x00", "tag": "mlops"}]},
     ("feedback", "1", "request_id")),
    ({"feedback": [{"request_id": "r", "index": -1, "tag": "mlops"}]}, ("feedback", "0", "index")),
    ({"feedback": [{"request_id": "r", "index": 2**31, "tag": "mlops"}]}, ("feedback", "0", "index")),
    ({"feedback": []}, ("feedback",)),
    ({"feedback": [{"text": "x", "tag": "mlops"}] * 101}, ("feedback",)),
    ({"feedback": [{"text": "x", "tag": "mlops", "extra": 1}]}, ("feedback", "0", "extra")),
    ({}, ("feedback",)),
])
def test_bad_input_is_a_422_naming_the_field(logged, body, path):
    app, key = logged
    r = app.test_client().post("/feedback", headers=key, json=body)
    errors = check_envelope(r, 422, "POST")["data"]["errors"]
    for part in path:
        errors = errors[part]
    assert errors
    assert list(_store(app).labelled_texts()) == []


@pytest.fixture(scope="module")
def other_classes_template(tmp_path_factory, trained) -> tuple[Path, str, str]:
    """An artifacts folder whose default's classes are not the shipped model's (computer-vision is
    "vision"), beside a version with the shipped classes: ``(root, default, shipped)``."""
    root = tmp_path_factory.mktemp("other-classes")
    sha = artifacts.sha256_file(settings.DATA_FILE)
    registry = open_registry(root)
    shipped = artifacts.save(root, trained, sha).version
    default = registry.save_version(renamed_classes(trained, {"computer-vision": "vision"}), sha).version
    registry.store.close()
    return root, default, shipped


@pytest.fixture
def other_classes(tmp_path, other_classes_template, make_app):
    """An app on a private copy of that folder, its predict key's header, and the two versions."""
    template, default, shipped = other_classes_template
    root = tmp_path / "artifacts"
    shutil.copytree(template, root)
    app = make_app(ARTIFACTS_DIR=str(root), PREDICTION_LOG="texts", REGISTRY_POLL_S=0)
    return app, {"Authorization": f"Bearer {add_key(app, 'reader', 'predict')}"}, root, default, shipped


def test_a_wrong_tag_lists_the_classes_of_the_model_it_is_checked_against(other_classes):
    app, key, _, default, _ = other_classes
    labels = app.extensions["tagifai"].service.model.labels
    assert "vision" in labels and "computer-vision" not in labels
    r = app.test_client().post("/feedback", headers=key, json={"feedback": [{"text": "x", "tag": "robots"}]})
    errors = check_envelope(r, 422, "POST")["data"]["errors"]
    assert errors == {"feedback": {"0": {"tag": [f"Must be one of the classes of {default}: {', '.join(labels)}."]}}}


def _logged_row(request_id: str, version: str, predicted: str) -> tuple:
    """A logged one-text request (see ``Store.log_requests``), as if ``version`` had answered it."""
    return (time.time(), request_id, version, None, [(predicted, 0.9, False, None, 6, 1, 0, "0" * 32, "a text")])


def test_each_tag_is_one_of_the_classes_of_the_version_that_made_the_prediction(other_classes):
    """A text's tag is checked against the default's classes; a prediction's against the classes of the
    version that made it, read from its files (it is not loaded for that), or the default's when that
    version is gone. An unknown request is reported in its item, whatever its tag."""
    app, key, root, default, shipped = other_classes
    client = app.test_client()
    service = app.extensions["tagifai"].service
    _store(app).log_requests([_logged_row("by-shipped", shipped, "mlops"), _logged_row("by-default", default, "mlops"),
                              _logged_row("by-gone", "v-gone", "mlops")])

    def send(*items):
        return client.post("/feedback", headers=key, json={"feedback": list(items)})

    r = send({"request_id": "by-shipped", "tag": "vision"}, {"request_id": "by-default", "tag": "computer-vision"},
             {"request_id": "by-gone", "tag": "computer-vision"}, {"text": "Image segmentation", "tag": "vision"},
             {"request_id": "nope", "tag": "robots"})
    errors = check_envelope(r, 422, "POST")["data"]["errors"]["feedback"]
    shipped_labels = json.loads((root / shipped / "labels.json").read_text())
    assert errors == {"0": {"tag": [f"Must be one of the classes of {shipped}: {', '.join(shipped_labels)}."]},
                      "1": {"tag": [f"Must be one of the classes of {default}: {', '.join(service.model.labels)}."]},
                      "2": {"tag": [f"Must be one of the classes of {default}: {', '.join(service.model.labels)}."]}}
    assert list(_store(app).labelled_texts()) == []
    r = send({"request_id": "by-shipped", "tag": "computer-vision"}, {"request_id": "by-default", "tag": "vision"},
             {"request_id": "by-gone", "tag": "vision"}, {"text": "Image segmentation", "tag": "vision"},
             {"request_id": "nope", "tag": "robots"})
    items = check_envelope(r, 200, "POST")["data"]["items"]
    assert [i["status"] for i in items] == ["created"] * 4 + ["unknown_request"]
    assert shipped not in service.loaded_versions()


def test_the_document_gives_the_default_classes_for_a_text_and_no_list_for_a_prediction(other_classes):
    app, _, _, _, _ = other_classes
    spec = app.test_client().get("/openapi.json").get_json()
    body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    prediction, text = body["properties"]["feedback"]["items"]["oneOf"]
    assert text["properties"]["tag"]["enum"] == app.extensions["tagifai"].service.model.labels
    assert "enum" not in prediction["properties"]["tag"]


def test_not_json_is_415(logged):
    app, key = logged
    check_envelope(app.test_client().post("/feedback", headers=key, data="x", content_type="text/plain"), 415, "POST")
