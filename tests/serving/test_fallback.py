"""When the default cannot be loaded, a worker serves the last good version and says so everywhere:
the answers' model_version, the log, the metric, /health/ready, /models; and it stops as soon as the
default loads again. TAGIFAI_FALLBACK=off keeps the 503."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import LESSON, add_key, check_envelope, copy_version, open_registry


def _damage(root, version, name="model.npz"):
    path = root / version / name
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    return lambda: path.write_bytes(original)


def _fallback_gauge(client) -> dict:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.labels["wanted"], s.labels["serving"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "tagifai_model_fallback"}


@pytest.fixture
def switched(registry_root):
    """``(root, previous, damaged_default)``: the default was ``first``, then switched to ``second``,
    whose model file is now damaged by one byte."""
    root, first, second = registry_root
    registry = open_registry(root)
    registry.set_default(second)
    registry.store.close()
    restore = _damage(root, second)
    return root, first, second, restore


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_damaged_default_at_start_serves_the_previous_one_and_says_so(switched, make_app):
    root, first, second, restore = switched
    handler = _Records()
    logger = logging.getLogger("tagifai_api.serving.service")
    logger.addHandler(handler)
    try:
        app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0)
    finally:
        logger.removeHandler(handler)
    client = app.test_client()
    body = check_envelope(client.post("/predict", json=LESSON), 200, "POST")
    assert body["data"]["model_version"] == first
    ready = check_envelope(client.get("/health/ready"), 200)["data"]
    assert ready["degraded"] is True and ready["model_version"] == first
    assert ready["fallback"]["wanted"] == second and ready["fallback"]["serving"] == first
    assert "does not match its sha256" in ready["fallback"]["reason"] == ready["reason"]
    listing = client.get("/models").get_json()["data"]
    assert listing["default"] == second and listing["fallback"]["serving"] == first
    refused = check_envelope(client.get("/models/default"), 409)
    assert refused["data"]["fallback"]["serving"] == first
    assert _fallback_gauge(client) == {(second, first): 1.0}
    (logged,) = [r for r in handler.records if getattr(r, "event", None) == "model_fallback"]
    assert logged.levelname == "ERROR" and logged.wanted == second and logged.model_version == first
    assert "does not match its sha256" in logged.getMessage()
    # an explicit request for the damaged version is still refused
    check_envelope(client.post(f"/predict?version={second}", json=LESSON), 409, "POST")
    # the recorded default did not change
    assert app.extensions["tagifai"].service.registry.pointers()[0] == second
    # the files restored: the next refresh serves the default again and the fallback is over
    restore()
    app.extensions["tagifai"].service.refresh()
    assert client.post("/predict", json=LESSON).get_json()["data"]["model_version"] == second
    ready = client.get("/health/ready").get_json()["data"]
    assert ready["degraded"] is False and "fallback" not in ready
    assert client.get("/models").get_json()["data"]["fallback"] is None
    assert _fallback_gauge(client) == {(second, first): 0.0}


@pytest.mark.parametrize("damage", ["missing file", "incompatible library", "warm-up raises"])
def test_other_ways_a_default_cannot_load_fall_back_too(switched, make_app, damage, monkeypatch):
    root, first, second, restore = switched
    restore()
    if damage == "missing file":
        (root / second / "model.npz").unlink()
    elif damage == "incompatible library":
        manifest = json.loads((root / second / "manifest.json").read_text())
        manifest["sklearn_version"] = "0.1.0"
        (root / second / "manifest.json").write_text(json.dumps(manifest))
    else:
        from tagifai_api.ml.predict import Predictor

        original = Predictor.predict

        def broken(self, texts):
            if self.version == second:
                raise RuntimeError("warm-up broke")
            return original(self, texts)

        monkeypatch.setattr(Predictor, "predict", broken)
    client = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0).test_client()
    assert client.post("/predict", json=LESSON).get_json()["data"]["model_version"] == first
    assert client.get("/health/ready").get_json()["data"]["fallback"]["wanted"] == second


def test_with_no_history_the_newest_sound_version_is_served(registry_root, make_app):
    root, first, second = registry_root
    third = copy_version(root, first, "v29990101T000000000000Z")
    _damage(root, first)  # the default (no history behind it) is damaged; second and third are sound
    client = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0).test_client()
    assert client.post("/predict", json=LESSON).get_json()["data"]["model_version"] == third


def test_a_version_that_fails_its_checksums_is_never_the_fallback(switched, make_app):
    root, first, second, restore = switched
    _damage(root, first)  # the history's version is damaged too
    client = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0, FALLBACK=True).test_client()
    check_envelope(client.post("/predict", json=LESSON), 503, "POST")
    assert client.get("/health/ready").status_code == 503


def test_fallback_off_keeps_the_503(switched, make_app):
    root, first, second, restore = switched
    client = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0, FALLBACK=False).test_client()
    body = check_envelope(client.post("/predict", json=LESSON), 503, "POST")
    assert "does not match its sha256" in body["message"]
    ready = check_envelope(client.get("/health/ready"), 503)["data"]
    assert ready["degraded"] is False and "does not match" in ready["reason"]


def test_a_switch_to_the_damaged_version_is_refused_and_the_fallback_ends_with_a_rollback(switched, make_app):
    root, first, second, restore = switched
    app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0)
    admin = {"Authorization": f"Bearer {add_key(app, 'ops', 'admin')}"}
    client = app.test_client()
    # the damaged default itself, and a damaged copy: verification refuses both, nothing changes
    check_envelope(client.put("/models/default", json={"version": second}, headers=admin), 409, "PUT")
    third = copy_version(root, second, "v29990101T000000000000Z")  # a damaged copy
    check_envelope(client.put("/models/default", json={"version": third}, headers=admin), 409, "PUT")
    rolled = check_envelope(client.post("/models/default/rollback", headers=admin), 200, "POST")["data"]
    assert rolled == {"previous": second, "default": first}
    ready = client.get("/health/ready").get_json()["data"]
    assert ready["model_version"] == first and ready["degraded"] is False
