"""Switching, rolling back and shadowing through the app's test client: admin keys only, verified
first, and a refusal changes nothing."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.auth.keys import KeyStore
from tagifai_api.ml import artifacts
from tagifai_api.store import files, registry
from tests.helpers import copy_version, wait_until

TEXTS = ["YOLO object detection", "a project about things", "BERT for question answering", "an idea"]


@pytest.fixture
def keys(tmp_path) -> dict:
    store = KeyStore(tmp_path / "api_keys.json")
    return {"file": str(tmp_path / "api_keys.json"), "admin": store.create("ops", "admin"),
            "predict": store.create("reader", "predict")}


@pytest.fixture
def setup(make_app, registry_root, keys):
    root, first, second = registry_root
    app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0, API_KEYS_FILE=keys["file"])
    return app, app.test_client(), root, first, second


def admin(keys) -> dict:
    return {"Authorization": f"Bearer {keys['admin']}"}


WRITES = [("put", "/models/default", True), ("post", "/models/default/rollback", False),
          ("put", "/models/shadow", True), ("delete", "/models/shadow", False)]


@pytest.mark.parametrize("method, path, with_body", WRITES)
def test_writes_need_an_admin_key(setup, keys, method, path, with_body):
    app, client, root, first, second = setup
    kwargs = {"json": {"version": second}} if with_body else {}
    anonymous = getattr(client, method)(path, **kwargs)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    reader = getattr(client, method)(path, headers={"X-API-Key": keys["predict"]}, **kwargs)
    assert reader.status_code == 403 and "admin role" in reader.get_json()["message"]
    assert registry.pointers(root) == (first, None) and registry.history(root) == []


@pytest.mark.parametrize("method, path, with_body", WRITES)
def test_writes_are_closed_when_no_admin_key_exists(make_app, registry_root, tmp_path, method, path, with_body):
    root, first, second = registry_root
    store = KeyStore(tmp_path / "only_readers.json")
    reader = store.create("reader", "predict")
    client = make_app(ARTIFACTS_DIR=str(root), API_KEYS_FILE=str(tmp_path / "only_readers.json")).test_client()
    kwargs = {"json": {"version": second}} if with_body else {}
    for headers in ({}, {"Authorization": f"Bearer {reader}"}):
        body = getattr(client, method)(path, headers=headers, **kwargs).get_json()
        assert body["status-code"] == 403 and "No admin API key is configured" in body["message"]
    assert registry.pointers(root) == (first, None)


def test_switch_then_roll_back(setup, keys):
    app, client, root, first, second = setup
    r = client.put("/models/default", json={"version": second}, headers=admin(keys)).get_json()
    assert r["status-code"] == 200 and r["data"] == {"previous": first, "default": second}
    # this worker serves it at once (the others within TAGIFAI_REGISTRY_POLL_S)
    assert client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]["model_version"] == second
    listed = client.get("/models").get_json()["data"]
    assert listed["default"] == second and listed["history"] == [first]
    assert artifacts.default_version(root) == second
    back = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert back["status-code"] == 200 and back["data"] == {"previous": second, "default": first}
    assert client.get("/models/default").get_json()["data"]["version"] == first
    again = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert again["status-code"] == 409 and "history is empty" in again["message"]
    assert artifacts.default_version(root) == first



def test_history_is_newest_first_and_rollbacks_walk_it_back_in_order(setup, keys):
    app, client, root, first, second = setup
    third = copy_version(root, second, "v29990101T000000000000Z")
    fourth = copy_version(root, second, "v29990102T000000000000Z")
    for previous, version in ((first, second), (second, third), (third, fourth)):
        r = client.put("/models/default", json={"version": version}, headers=admin(keys)).get_json()
        assert r["status-code"] == 200 and r["data"] == {"previous": previous, "default": version}
    listed = client.get("/models").get_json()["data"]
    assert listed["default"] == fourth and listed["history"] == [third, second, first]
    for current, back, left in ((fourth, third, [second, first]), (third, second, [first]), (second, first, [])):
        r = client.post("/models/default/rollback", headers=admin(keys)).get_json()
        assert r["status-code"] == 200 and r["data"] == {"previous": current, "default": back}
        listed = client.get("/models").get_json()["data"]
        assert listed["default"] == back and listed["history"] == left
        served = client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]
        assert served["model_version"] == back
    again = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert again["status-code"] == 409 and artifacts.default_version(root) == first

def test_a_version_failing_verification_is_409_and_nothing_changes(setup, keys):
    app, client, root, first, second = setup
    (root / second / "model.joblib").write_bytes(b"tampered")
    for path in ("/models/default", "/models/shadow"):
        body = client.put(path, json={"version": second}, headers=admin(keys)).get_json()
        assert body["status-code"] == 409, body
        assert "model.joblib does not match its sha256" in body["data"]["reason"]
    assert registry.pointers(root) == (first, None) and registry.history(root) == []
    assert client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]["model_version"] == first


def test_a_failing_warm_up_is_409(setup, keys, monkeypatch):
    app, client, root, first, second = setup

    def broken(self, texts):
        raise MemoryError("no room")

    monkeypatch.setattr("tagifai_api.ml.predict.Predictor.predict", broken)
    body = client.put("/models/default", json={"version": second}, headers=admin(keys)).get_json()
    assert body["status-code"] == 409 and "warm-up prediction failed" in body["data"]["reason"]
    assert artifacts.default_version(root) == first


@pytest.mark.parametrize("body, status", [({"version": "nope"}, 404), ({"version": ""}, 422), ({}, 422),
                                          ({"version": 3}, 422), ({"version": "x", "more": 1}, 422)])
def test_bad_requests_change_nothing(setup, keys, body, status):
    app, client, root, first, second = setup
    for path in ("/models/default", "/models/shadow"):
        answer = client.put(path, json=body, headers=admin(keys)).get_json()
        assert answer["status-code"] == status, answer
        if status == 404:
            assert answer["data"]["valid"] == [second, first]
    not_json = client.put("/models/default", data="v1", headers={**admin(keys), "Content-Type": "text/plain"})
    assert not_json.status_code == 415
    assert registry.pointers(root) == (first, None)


def test_a_pinned_service_refuses_to_switch(make_app, registry_root, keys):
    root, first, second = registry_root
    client = make_app(ARTIFACTS_DIR=str(root), MODEL_VERSION=second, API_KEYS_FILE=keys["file"]).test_client()
    body = client.put("/models/default", json={"version": first}, headers=admin(keys)).get_json()
    assert body["status-code"] == 409 and "pinned" in body["message"]
    assert client.get("/models").get_json()["data"]["default"] == second


def test_a_state_that_cannot_be_written_is_a_clear_500(setup, keys, monkeypatch):
    app, client, root, first, second = setup

    def read_only(path, data, **options):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(files, "write_atomic", read_only)
    body = client.put("/models/default", json={"version": second}, headers=admin(keys)).get_json()
    assert body["status-code"] == 500 and "Permission denied" in body["message"]
    assert artifacts.default_version(root) == first


def test_shadow_is_scored_and_its_agreement_shown(setup, keys):
    app, client, root, first, second = setup
    assert client.put("/models/shadow", json={"version": first}, headers=admin(keys)).status_code == 409  # the default
    r = client.put("/models/shadow", json={"version": second}, headers=admin(keys)).get_json()
    assert r["status-code"] == 200 and r["data"] == {"previous": None, "shadow": second}
    for text in TEXTS:
        assert client.post("/predict", json={"texts": [{"text": text}]}).status_code == 200
    service = app.extensions["tagifai"].service
    deadline = time.monotonic() + 5
    while service.shadow.scored < len(TEXTS) and time.monotonic() < deadline:
        time.sleep(0.01)
    data = client.get("/models").get_json()["data"]
    assert data["shadow"] == second
    agreement = data["shadow_agreement"]
    assert agreement["scored"] == len(TEXTS) == agreement["agree"] + agreement["disagree"]
    assert agreement["disagree"] > 0 and agreement["rate"] == round(agreement["agree"] / len(TEXTS), 4)
    assert [m["shadow"] for m in data["models"]] == [True, False]
    assert client.get("/models/shadow").get_json()["data"] == {"shadow": second, "shadow_agreement": agreement}
    cleared = client.delete("/models/shadow", headers=admin(keys)).get_json()
    assert cleared["data"] == {"previous": second, "shadow": None}
    assert client.delete("/models/shadow", headers=admin(keys)).get_json()["data"]["previous"] is None
    assert client.get("/models").get_json()["data"]["shadow_agreement"] is None
    assert client.get("/models/shadow").get_json()["data"] == {"shadow": None, "shadow_agreement": None}



def test_shadow_counter_is_labelled_with_the_served_version_and_the_shadow(setup, keys):
    app, client, root, first, second = setup
    third = copy_version(root, first, "v29990101T000000000000Z")
    assert client.put("/models/shadow", json={"version": second}, headers=admin(keys)).status_code == 200
    for text in TEXTS:
        assert client.post("/predict", json={"texts": [{"text": text}]}).status_code == 200
    asked = client.post(f"/predict?version={third}", json={"texts": [{"text": t} for t in TEXTS]}).get_json()
    assert asked["data"]["model_version"] == third
    wait_until(lambda: client.get("/models").get_json()["data"]["shadow_agreement"]["scored"] == 2 * len(TEXTS),
               what="every text scored by the shadow")
    agreement = client.get("/models").get_json()["data"]["shadow_agreement"]
    assert agreement["agree"] > 0 and agreement["disagree"] > 0
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    samples = {tuple(sorted(s.labels.items())): s.value
               for family in families for s in family.samples if s.name == "tagifai_shadow_predictions_total"}
    # the third version has the first's files, so each of the two served versions saw the same split
    expected = {}
    for served in (first, third):
        for outcome in ("agree", "disagree"):
            labels = (("model_version", served), ("outcome", outcome), ("shadow_version", second))
            expected[labels] = agreement[outcome] / 2
    assert samples == expected

def test_mode_off_is_an_explicit_choice_that_opens_the_writes(make_app, registry_root):
    root, first, second = registry_root
    client = make_app(ARTIFACTS_DIR=str(root), AUTH="off").test_client()
    assert client.put("/models/default", json={"version": second}).get_json()["data"]["default"] == second
