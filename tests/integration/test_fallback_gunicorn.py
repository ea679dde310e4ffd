"""The fallback under real Gunicorn (2 workers): a damaged default at start is served by neither worker,
both serve the previous default and say so (readiness, metric), and both return to the default within
seconds of its files being restored; with TAGIFAI_FALLBACK=off they answer 503 meanwhile."""

from __future__ import annotations

import time

import pytest
import requests

from tests import helpers

pytestmark = pytest.mark.integration

TEXT = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}


def _switched_and_damaged(root, second):
    registry = helpers.open_registry(root)
    registry.set_default(second)
    registry.store.close()
    path = root / second / "model.npz"
    original = path.read_bytes()
    path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    return lambda: path.write_bytes(original)


def _fallback_gauge(url: str) -> dict:
    samples = helpers.scrape(url)
    return {(s.labels["wanted"], s.labels["serving"]): s.value for s in samples if s.name == "tagifai_model_fallback"}


def test_both_workers_fall_back_say_so_and_return_when_the_files_are_restored(registry_root, tmp_path):
    root, first, second = registry_root
    restore = _switched_and_damaged(root, second)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_LOG_LEVEL": "INFO"}
    with helpers.gunicorn(root, workers=2, env=env) as server:
        sessions = helpers.one_session_per_worker(server.url, 2)
        for session in sessions:
            ready = session.get(f"{server.url}/health/ready", timeout=10)
            data = ready.json()["data"]
            assert ready.status_code == 200 and data["degraded"] is True and data["model_version"] == first
            assert data["fallback"]["wanted"] == second and data["fallback"]["serving"] == first
            assert "sha256" in data["fallback"]["reason"]
            answer = session.post(f"{server.url}/predict", json=TEXT, timeout=10).json()
            assert answer["status-code"] == 200 and answer["data"]["model_version"] == first
        assert _fallback_gauge(server.url) == {(second, first): 1.0}
        listing = requests.get(f"{server.url}/models", timeout=10).json()["data"]
        assert listing["default"] == second and listing["fallback"]["serving"] == first
        restore()
        restored = time.monotonic()

        def every_worker_on_the_default() -> bool:
            datas = [s.get(f"{server.url}/health/ready", timeout=10).json()["data"] for s in sessions]
            return all(d["model_version"] == second and d["degraded"] is False for d in datas)

        helpers.wait_until(every_worker_on_the_default, timeout_s=10, what="both workers back on the default")
        took = time.monotonic() - restored
        assert _fallback_gauge(server.url) == {(second, first): 0.0}
        for session in sessions:
            session.close()
    print("FALLBACK-OVER", round(took, 3))
    assert took < 3.0


def test_with_fallback_off_both_workers_answer_503(registry_root, tmp_path):
    root, first, second = registry_root
    _switched_and_damaged(root, second)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_FALLBACK": "off"}
    with helpers.gunicorn(root, workers=2, env=env, ready_status=503) as server:
        for session in helpers.one_session_per_worker(server.url, 2):
            r = session.post(f"{server.url}/predict", json=TEXT, timeout=10)
            assert r.status_code == 503 and "sha256" in r.json()["message"]
            ready = session.get(f"{server.url}/health/ready", timeout=10).json()["data"]
            assert ready["degraded"] is False and "sha256" in ready["reason"]
            session.close()
