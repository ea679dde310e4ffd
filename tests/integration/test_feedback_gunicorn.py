"""The prediction log and feedback under real Gunicorn (2 workers), on SQLite and on a real PostgreSQL:
every answer logged once by whichever worker gave it, corrections through either worker, and answers
kept (rows dropped and counted) while PostgreSQL is down."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers

pytestmark = pytest.mark.integration

TEXTS = ["YOLO object detection in images", "BERT for question answering", "Kubeflow pipelines on Kubernetes"]


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request, artifacts_dir, tmp_path):
    """``(server, store, key header, pg or None)``: 2 workers logging texts into a store of their own."""
    pg = None
    if request.param == "sqlite":
        root = tmp_path / "artifacts"
        helpers.copy_tree_with_state(artifacts_dir, root)
        url = helpers.state_url(root)
    else:
        pg = request.getfixturevalue("pg_cluster")
        url = pg.url
        root = artifacts_dir
    store = Store(url)
    store.upgrade()
    registry = Registry(store, root)
    if registry.pointers()[0] is None:
        registry.seed(root)
    key = KeyStore(store).create("tagger", "predict")
    env = {"TAGIFAI_DATABASE_URL": url, "TAGIFAI_PREDICTION_LOG": "texts",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with helpers.gunicorn(root, workers=2, env=env) as server:
        yield server, store, {"Authorization": f"Bearer {key}"}, pg
    store.close()


@pytest.fixture
def pg_cluster():
    with helpers.postgres() as server:
        yield server


def _send(url: str, i: int) -> dict:
    r = requests.post(f"{url}/predict", json={"texts": [{"text": t} for t in TEXTS]},
                      headers={"X-Request-ID": f"r{i}"}, timeout=30)
    assert r.status_code == 200
    return r.json()["data"]


def test_every_answer_is_logged_once_and_corrections_count_through_either_worker(served):
    server, store, key, _ = served
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _send(server.url, i), range(60)))
    ours = {f"r{i}" for i in range(60)}  # the session's store may hold other tests' answers too

    def logged() -> list[dict]:
        return [r for r in store.predictions() if r["request_id"] in ours]

    helpers.wait_until(lambda: len(logged()) >= 180, timeout_s=10, what="the rows written")
    rows = logged()
    assert len(rows) == 180
    assert len({(r["request_id"], r["position"]) for r in rows}) == 180  # nothing twice
    by_key = {(r["request_id"], r["position"]): r for r in rows}
    for i, data in enumerate(answers):
        for j, p in enumerate(data["predictions"]):
            row = by_key[(f"r{i}", j)]
            assert (row["predicted"], row["text"], row["model_version"]) == (p["predicted_tag"], TEXTS[j],
                                                                            data["model_version"])
    # corrections through fresh connections (either worker), the second one of r0 replacing the first
    first = answers[0]["predictions"]
    wrong = "other" if first[2]["predicted_tag"] != "other" else "mlops"
    for tag in ("mlops", wrong):
        r = requests.post(f"{server.url}/feedback", headers=key, timeout=30, json={"feedback": [
            {"request_id": "r0", "index": 2, "tag": tag}, {"request_id": "r1", "index": 0,
                                                           "tag": first[0]["predicted_tag"]}]})
        assert r.status_code == 200 and r.json()["data"]["recorded"] == 2, r.text
    quality = requests.get(f"{server.url}/models/default/quality", timeout=10).json()["data"]
    assert quality["all"]["count"] == 2 and quality["all"]["correct"] == 1
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert any(line.startswith("tagifai_feedback_total") and f'actual="{wrong}"' in line and line.endswith(" 1.0")
               for line in metrics.splitlines())


@pytest.mark.parametrize("served", ["postgresql"], indirect=True)
def test_postgres_down_keeps_every_answer_and_counts_the_dropped_rows(served):
    server, store, key, pg = served
    pg.stop()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: _send(server.url, i), range(40)))  # every one 200 (asserted)
        time.sleep(1.5)  # the writers have tried, and dropped
        dropped = _dropped(server.url)
    finally:
        pg.start()
    assert len(answers) == 40 and dropped == 120
    _send(server.url, 1000)
    helpers.wait_until(lambda: any(r["request_id"] == "r1000" for r in store.predictions()), timeout_s=10,
                       what="rows written again once PostgreSQL is back")
    print("PREDICTION-LOG-OUTAGE", json.dumps({"answered": len(answers) * 3, "dropped": dropped}))


def _dropped(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("tagifai_prediction_log_dropped_total"))
