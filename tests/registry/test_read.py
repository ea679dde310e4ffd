"""Reading the registry and choosing a version per request, through the app's test client."""

from __future__ import annotations

import pytest

from tagifai_api.ml import versions
from tests.helpers import copy_version

TEXT = {"texts": [{"text": "YOLO object detection in images"}]}


@pytest.fixture
def setup(make_app, registry_state):
    root, first, second, url = registry_state
    app = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=0)
    return app.test_client(), root, first, second


def damage(root, version):
    (root / version / "model.npz").write_bytes(b"damaged")


def test_models_lists_every_version_newest_first_with_the_default(setup):
    client, root, first, second = setup
    damaged = copy_version(root, second, "v29990101T000000000000Z")
    damage(root, damaged)
    body = client.get("/models").get_json()
    assert body["status-code"] == 200
    data = body["data"]
    assert data["default"] == first and data["shadow"] is None and data["shadow_agreement"] is None
    assert data["history"] == []
    assert [m["version"] for m in data["models"]] == [damaged, second, first]
    bad, candidate, default = data["models"]
    assert bad["valid"] is False and "does not match its sha256" in bad["reason"]
    assert default["default"] is True and candidate["default"] is False
    for entry in (candidate, default):
        assert entry["valid"] is True
        assert {"version", "created_at", "metrics", "sklearn_version", "dataset_sha256"} <= set(entry)
        assert set(entry["metrics"]) == {"f1", "precision", "recall"}


def test_one_model_in_full_and_the_default_alias(setup):
    client, root, first, second = setup
    data = client.get(f"/models/{second}").get_json()["data"]
    assert data["version"] == second and data["default"] is False
    assert data["manifest"]["version"] == second
    assert data["args"]["threshold"] == 0.75
    assert set(data["performance"]) >= {"overall", "class"}
    alias = client.get("/models/default").get_json()["data"]
    assert alias["version"] == first and alias["default"] is True


def test_unknown_model_is_404_listing_the_valid_ones(setup):
    client, root, first, second = setup
    damage(root, copy_version(root, second, "v29990101T000000000000Z"))
    body = client.get("/models/v1").get_json()
    assert body["status-code"] == 404
    assert body["data"]["valid"] == [second, first]
    assert first in body["message"] and second in body["message"]


def test_a_damaged_model_is_409_with_the_reason(setup):
    client, root, first, second = setup
    damage(root, second)
    body = client.get(f"/models/{second}").get_json()
    assert body["status-code"] == 409
    assert body["data"]["valid"] is False and "does not match" in body["data"]["reason"]


@pytest.mark.parametrize("query", ["", "?version=default"])
def test_predict_without_a_version_uses_the_default(setup, query):
    client, root, first, second = setup
    body = client.post(f"/predict{query}", json=TEXT).get_json()
    assert body["data"]["model_version"] == first


def test_predict_performance_and_args_answer_with_the_version_asked_for(setup):
    client, root, first, second = setup
    predicted = client.post(f"/predict?version={second}", json=TEXT).get_json()["data"]
    assert predicted["model_version"] == second
    performance = client.get(f"/performance?version={second}&filter=overall").get_json()["data"]
    assert performance["model_version"] == second and "f1" in performance["performance"]
    args = client.get(f"/args?version={second}").get_json()["data"]
    assert args == {"model_version": second, "args": versions.describe(root, second)["args"]}
    assert client.get(f"/args/threshold?version={second}").get_json()["data"] == {"threshold": 0.75}
    assert client.get("/args/threshold").get_json()["data"]["threshold"] != 0.75


@pytest.mark.parametrize("path", ["/predict", "/performance", "/args", "/args/threshold"])
def test_unknown_version_is_404_and_a_damaged_one_409(setup, path):
    client, root, first, second = setup
    damage(root, second)
    call = client.post if path == "/predict" else client.get
    kwargs = {"json": TEXT} if path == "/predict" else {}
    unknown = call(f"{path}?version=v1", **kwargs).get_json()
    assert unknown["status-code"] == 404 and unknown["data"]["valid"] == [first]
    broken = call(f"{path}?version={second}", **kwargs).get_json()
    assert broken["status-code"] == 409 and "does not match" in broken["data"]["reason"]
    # and the worker goes on serving
    assert client.post("/predict", json=TEXT).get_json()["status-code"] == 200


def test_model_version_label_of_metrics_follows_the_version(setup):
    client, root, first, second = setup
    client.post(f"/predict?version={second}", json=TEXT)
    client.post("/predict", json=TEXT)
    scraped = client.get("/metrics").get_data(as_text=True)
    predictions = [line for line in scraped.splitlines() if line.startswith("tagifai_predictions_total")]
    for version in (first, second):
        assert f'tagifai_inference_seconds_count{{model_version="{version}"}} 1.0' in scraped
        assert any(f'model_version="{version}"' in line for line in predictions)
