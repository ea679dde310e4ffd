"""Two Gunicorn instances sharing one real PostgreSQL: a retraining started through one is refused by the
other while it runs (409 naming it), followed from either, and its promotion reaches both; then the
other may start the next."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import requests

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers

pytestmark = pytest.mark.integration


def _job(url: str, headers: dict, job_id: str) -> dict:
    seen = {}

    def done() -> bool:
        seen["job"] = requests.get(f"{url}/jobs/{job_id}", headers=headers, timeout=10).json()["data"]["job"]
        return seen["job"]["state"] in ("succeeded", "failed")

    helpers.wait_until(done, timeout_s=120, what=f"job {job_id} ended")
    return seen["job"]


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_one_retraining_at_a_time_across_two_instances_on_postgresql(loop, store_url, corrections, send, tmp_path):
    root, default, _ = loop
    store = Store(store_url)
    try:
        registry = Registry(store, root)
        registry.store.upgrade()
        registry.set_default(default, verifier=lambda _: None)
        headers = {"Authorization": f"Bearer {KeyStore(registry.store).create('ops', 'admin')}"}
        send(registry.store, corrections)
        # the jobs' priority is tested on its own: here they should not wait behind a shared machine's other work
        env = {"TAGIFAI_DATABASE_URL": store_url, "TAGIFAI_RETRAIN_DATA": str(root / "small.csv"),
               "TAGIFAI_RETRAIN_NICE": "0"}
        with ExitStack() as stack:
            a, b = (stack.enter_context(helpers.gunicorn(root, workers=1, env=env, log_path=tmp_path / f"{name}.log"))
                    for name in ("a", "b"))
            started = requests.post(f"{a.url}/models/retrain", headers=headers, timeout=10)
            assert started.status_code == 202, started.text
            job = started.json()["data"]["job"]
            refused = requests.post(f"{b.url}/models/retrain", headers=headers, json={"shadow": True}, timeout=10)
            assert refused.status_code == 409 and refused.json()["data"]["job"]["id"] == job["id"]
            assert job["id"] in refused.json()["message"]

            finished = _job(b.url, headers, job["id"])  # followed through the other instance
            assert finished["state"] == "succeeded", finished["error"]
            candidate = finished["result"]["candidate"]
            assert finished["result"]["decision"] == "promoted"
            helpers.wait_until(lambda: all(requests.get(f"{server.url}/health/ready", timeout=5).json()["data"]
                                           ["model_version"] == candidate for server in (a, b)),
                               timeout_s=10, what="both instances serve the promoted candidate")

            again = requests.post(f"{b.url}/models/retrain", headers=headers, timeout=10)
            assert again.status_code == 202, again.text
            second = _job(a.url, headers, again.json()["data"]["job"]["id"])
            assert second["state"] == "succeeded" and second["result"]["parent"] == candidate
    finally:  # however it ends: a connection left open fails the next test
        store.close()
