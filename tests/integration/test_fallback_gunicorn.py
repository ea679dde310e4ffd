"""The fallback under real Gunicorn (2 workers): a damaged default at start is served by neither worker,
both serve the previous default and say so (readiness, metric), and both return to the default within
seconds of its files being restored; with TAGIFAI_FALLBACK=off they answer 503 meanwhile."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np
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


def _break(root, version: str, how: str) -> None:
    """Make ``version`` unloadable in one of the ways a default can be, its checksums kept honest where
    the way is not a damaged file."""
    directory = root / version
    if how == "missing file":
        (directory / "model.npz").unlink()
        return
    manifest = json.loads((directory / "manifest.json").read_text())
    if how == "incompatible library":
        manifest["sklearn_version"] = "0.1.0"
    else:  # "warm-up raises": the file loads, its arrays do not fit together
        arrays = dict(np.load(directory / "model.npz", allow_pickle=False))
        arrays["coef"] = arrays["coef"][:10]
        np.savez(directory / "model.npz", **arrays)
        manifest["files"]["model.npz"] = hashlib.sha256((directory / "model.npz").read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["missing file", "incompatible library", "warm-up raises"])
def test_each_way_a_default_cannot_load_falls_back_in_both_workers(registry_root, tmp_path, how):
    root, first, second = registry_root
    registry = helpers.open_registry(root)
    registry.set_default(second)
    registry.store.close()
    _break(root, second, how)
    with helpers.gunicorn(root, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}) as server:
        for session in helpers.one_session_per_worker(server.url, 2):
            data = session.get(f"{server.url}/health/ready", timeout=10).json()["data"]
            assert data["degraded"] is True and data["fallback"]["wanted"] == second, data
            assert data["model_version"] == first
            assert session.post(f"{server.url}/predict", json=TEXT, timeout=10).json()["data"]["model_version"] == first
            session.close()
        assert _fallback_gauge(server.url) == {(second, first): 1.0}


def test_a_default_damaged_on_disk_is_refused_as_a_switch_target(registry_root, tmp_path):
    root, first, second = registry_root
    store = helpers.open_registry(root).store
    from tagifai_api.auth.keys import KeyStore

    admin = {"Authorization": f"Bearer {KeyStore(store).create('ops', 'admin')}"}
    store.close()
    path = root / second / "model.npz"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with helpers.gunicorn(root, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}) as server:
        r = requests.put(f"{server.url}/models/default", json={"version": second}, headers=admin, timeout=30)
        assert r.status_code == 409 and "sha256" in r.json()["message"]
        assert requests.get(f"{server.url}/models", timeout=10).json()["data"]["default"] == first
        assert _fallback_gauge(server.url) == {}
