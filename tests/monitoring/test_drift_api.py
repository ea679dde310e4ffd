"""``GET /models/<version>/drift``, the drift status in ``GET /models``, the ``tagifai_drift`` gauges
and ``drift profile|report``, through the app and its prediction log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.auth.keys import KeyStore
from tagifai_api.ml import artifacts
from tagifai_api.monitoring.service import DriftMonitor, status_code
from tagifai_api.store.database import Store
from tests.helpers import ROOT, check_envelope, cli_env, default_of, drift_traffic, held_out, state_url, store_outage


@pytest.fixture(scope="module")
def projects(train_args):
    return held_out(train_args)


@pytest.fixture
def root(tmp_path, artifacts_dir):
    """A private copy of the session's artifacts folder whose prediction log is empty: servers that
    other tests ran on the session's folder logged what they answered there."""
    dest = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, dest)
    store = Store(state_url(dest))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM prediction_log")
    store.close()
    return dest


@pytest.fixture
def drift_app(make_app, root):
    """``make_app`` on :func:`root`."""
    return lambda **overrides: make_app(ARTIFACTS_DIR=str(root), **overrides)


def send(client, texts: list[str], headers: dict | None = None) -> str:
    """Answer ``texts`` 100 a request and write the log now (its thread writes every 0.5 s); the version."""
    for start in range(0, len(texts), 100):
        r = client.post("/predict", json={"texts": [{"text": t} for t in texts[start:start + 100]]},
                        headers=headers or {})
        assert r.status_code == 200, r.get_json()
    client.application.extensions["tagifai"].service.prediction_log.flush()
    return r.get_json()["data"]["model_version"]


def drift_samples(client) -> dict:
    body = client.get("/metrics").get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name.startswith("tagifai_drift"):
                out[(s.name, s.labels.get("model_version"), s.labels.get("statistic"))] = s.value
    return out


def test_a_version_without_enough_predictions_says_so_and_never_alarms(drift_app, projects):
    client = drift_app(DRIFT_CACHE_S=0.0).test_client()
    version = send(client, drift_traffic("german", 150, 0, projects))  # shifted, but fewer than 200
    data = check_envelope(client.get("/models/default/drift"), 200)["data"]
    assert data["model_version"] == version and data["status"] == "not_enough_data"
    assert data["window"] == {**data["window"], "texts": 150, "size": 1000, "minimum": 200}
    assert "150 logged predictions" in data["message"]
    assert {s["status"] for s in data["statistics"].values()} == {"not_enough_data"}
    assert all(s["value"] is None for s in data["statistics"].values())
    samples = drift_samples(client)
    assert samples[("tagifai_drift_status", version, None)] == -1
    assert samples[("tagifai_drift_window_texts", version, None)] == 150
    assert not any(name == "tagifai_drift" for name, _, _ in samples)


def test_shifted_traffic_is_drift_everywhere_an_operator_looks(drift_app, projects):
    client = drift_app(DRIFT_CACHE_S=0.0).test_client()
    version = send(client, drift_traffic("german", 1000, 0, projects))
    data = check_envelope(client.get(f"/models/{version}/drift"), 200)["data"]
    assert data["status"] == "drift"
    assert data["window"]["texts"] == 1000 and data["window"]["from"] <= data["window"]["to"]
    assert data["reference"]["texts"] == 764 and data["reference"]["kept_in"] == "version"
    oov = data["statistics"]["oov_increase"]
    assert oov["status"] == "drift" and oov["window"] > 0.9 and oov["value"] == pytest.approx(
        oov["window"] - oov["reference"], abs=1e-5)
    for statistic in data["statistics"].values():
        assert {"value", "warn", "drift", "status", "worse"} <= set(statistic)

    samples = drift_samples(client)
    assert samples[("tagifai_drift_status", version, None)] == 2
    assert samples[("tagifai_drift_window_texts", version, None)] == 1000
    for name, statistic in data["statistics"].items():
        assert samples[("tagifai_drift", version, name)] == pytest.approx(statistic["value"], rel=1e-9)
    (listed,) = [m for m in check_envelope(client.get("/models"), 200)["data"]["models"] if m["version"] == version]
    assert listed["drift"] == {"status": "drift", "texts": 1000}

    # in-distribution traffic takes the window over: every statistic is ok again
    send(client, drift_traffic("in_distribution", 1000, 0, projects))
    data = client.get("/models/default/drift").get_json()["data"]
    assert data["status"] == "ok" and {s["status"] for s in data["statistics"].values()} == {"ok"}
    assert drift_samples(client)[("tagifai_drift_status", version, None)] == 0


def test_thresholds_and_window_follow_the_settings(drift_app, projects):
    client = drift_app(DRIFT_CACHE_S=0.0, DRIFT_WINDOW=300, DRIFT_MIN=100, DRIFT_OOV_INCREASE="0.9,0.95",
                      DRIFT_CLASS_JS="0.5,0.9").test_client()
    send(client, drift_traffic("german", 300, 1, projects))
    data = client.get("/models/default/drift").get_json()["data"]
    assert (data["window"]["size"], data["window"]["minimum"], data["window"]["texts"]) == (300, 100, 300)
    oov = data["statistics"]["oov_increase"]
    assert (oov["warn"], oov["drift"], oov["status"]) == (0.9, 0.95, "ok")
    assert data["statistics"]["class_js"]["status"] == "ok"
    assert data["status"] == "drift"  # the confidence and length still say so


def test_bad_threshold_settings_are_refused_in_one_line(make_app):
    with pytest.raises(ValueError, match="TAGIFAI_DRIFT_LENGTH_PSI: expected 0 <= warn <= drift, got '0.3,0.1'"):
        make_app(DRIFT_LENGTH_PSI="0.3,0.1")
    with pytest.raises(ValueError, match="TAGIFAI_DRIFT_CLASS_CHI2_P: expected 0 <= drift <= warn <= 1"):
        make_app(DRIFT_CLASS_CHI2_P="0.001,0.01")
    with pytest.raises(ValueError, match="TAGIFAI_DRIFT_MIN <= DRIFT_WINDOW|DRIFT_MIN <= DRIFT_WINDOW"):
        make_app(DRIFT_WINDOW=100, DRIFT_MIN=200)


def test_unknown_and_damaged_versions(make_app, artifacts_copy):
    client = make_app(ARTIFACTS_DIR=str(artifacts_copy)).test_client()
    body = check_envelope(client.get("/models/v0/drift"), 404)
    assert body["data"]["valid"] == [default_of(artifacts_copy)]
    profile = artifacts_copy / default_of(artifacts_copy) / artifacts.PROFILE_FILE
    profile.write_text(profile.read_text() + " ")
    body = check_envelope(client.get("/models/default/drift"), 409)
    assert "profile.json does not match its sha256" in body["data"]["reason"]


def test_the_drift_route_needs_what_reading_models_needs(make_app, app_store):
    key = KeyStore(app_store).create("reader", "predict")
    client = make_app(AUTH="all").test_client()
    assert check_envelope(client.get("/models/default/drift"), 401)
    assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
    assert check_envelope(client.get("/models/default/drift", headers={"X-API-Key": key}), 200)
    assert make_app(AUTH="admin").test_client().get("/models/default/drift").status_code == 200


def test_a_store_outage_is_a_503_and_the_scrape_goes_on(make_app, app_store):
    client = make_app(DRIFT_CACHE_S=0.0).test_client()
    stores = (app_store, client.application.extensions["tagifai"].service.registry.store)
    with store_outage(app_store.url, stores=stores):
        body = check_envelope(client.get("/models/default/drift"), 503)
        assert "unavailable" in body["data"]["reason"]
        r = client.get("/metrics")
        assert r.status_code == 200 and "tagifai_predictions_total" in r.get_data(as_text=True)


def test_the_monitor_reuses_a_report_for_its_cache_time(root):
    now = [0.0]
    store = Store(state_url(root))
    monitor = DriftMonitor(store, root, cache_s=5.0, clock=lambda: now[0])
    version = default_of(root)
    first = monitor.report(version)
    item = ("mlops", 0.9, False, None, 40, 6, 1, "0" * 64, None)
    store.log_requests([(1.0, "r1", version, None, [item] * 10)])
    now[0] = 4.9
    assert monitor.report(version) is first
    now[0] = 5.1
    assert monitor.report(version)["window"]["texts"] == 10
    store.close()
    assert (status_code("ok"), status_code("warn"), status_code("drift"), status_code("no_profile")) == (0, 1, 2, -1)


def _strip_profile(root, version: str) -> None:
    """Make ``version`` look written before profiles: no profile.json, none in its manifest."""
    path = root / version
    (path / artifacts.PROFILE_FILE).unlink()
    manifest = json.loads((path / artifacts.MANIFEST).read_text())
    del manifest["files"][artifacts.PROFILE_FILE]
    (path / artifacts.MANIFEST).write_text(json.dumps(manifest))


def _cli(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagifai_api", "--artifacts", str(root), "drift", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin",
                                                                                       **cli_env(root)})


def test_an_older_version_gets_its_profile_from_the_command_line(make_app, root, projects, trained):
    version = default_of(root)
    _strip_profile(root, version)
    client = make_app(ARTIFACTS_DIR=str(root), DRIFT_CACHE_S=0.0).test_client()
    send(client, drift_traffic("short", 300, 0, projects))
    data = check_envelope(client.get("/models/default/drift"), 200)["data"]
    assert data["status"] == "no_profile" and data["statistics"] is None
    assert f"python -m tagifai_api drift profile {version}" in data["message"]
    assert drift_samples(client)[("tagifai_drift_status", version, None)] == -1

    out = _cli(root, "profile", "default")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"version": version, "kept_in": "store", "computed": True, "texts": 764}]
    data = client.get("/models/default/drift").get_json()["data"]
    assert data["reference"]["kept_in"] == "store" and data["status"] == "drift"
    assert data["statistics"]["length_psi"]["status"] == "drift"
    # the same profile training writes; the version's directory is as it was
    assert Store(state_url(root)).drift_profile(version) == json.loads(json.dumps(trained.profile))
    assert artifacts.PROFILE_FILE not in {p.name for p in (root / version).iterdir()}
    assert json.loads(_cli(root, "profile", "--all").stdout) == [{"version": version, "kept_in": "store",
                                                                   "computed": False}]
    report = _cli(root, "report")
    assert report.returncode == 0 and json.loads(report.stdout)["status"] == "drift"


def test_the_profile_command_refuses_another_dataset_and_bad_usage_in_one_line(tmp_path, root):
    _strip_profile(root, default_of(root))
    other = tmp_path / "other.csv"
    other.write_text((ROOT / "data" / "dataset.csv").read_text()[:-200])
    out = _cli(root, "profile", "default", "--data", str(other))
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "is not the dataset" in out.stderr and "--data" in out.stderr
    out = _cli(root, "profile")
    assert out.returncode == 2 and "name a VERSION or give --all" in out.stderr
    out = _cli(root, "report", "v0")
    assert out.returncode == 2 and out.stderr.startswith("error: no model version 'v0'")
