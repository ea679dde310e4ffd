"""Retraining over HTTP: a job in a process of its own (202, then its state, progress and result), one
at a time (409 naming the running job), and a shadowed candidate promoted only once it scored enough
live texts and the gate still holds."""

from __future__ import annotations

import os

import pytest

from tagifai_api import settings
from tagifai_api.retrain import candidate
from tagifai_api.store.jobs import Jobs
from tests.helpers import add_key, check_envelope, wait_until

TEXTS = ["YOLO object detection in drone images", "BERT for question answering", "Kubeflow pipelines on Kubernetes",
         "A feature store for real-time serving", "Segmenting cells in microscopy images"]


@pytest.fixture
def api(make_app, loop, loop_config):
    """``(app, client, admin headers, root, default, registry)`` on the loop folder."""
    root, default, registry = loop
    app = make_app(**loop_config, REGISTRY_POLL_S=0)
    headers = {"Authorization": f"Bearer {add_key(app, 'ops', 'admin')}"}
    return app, app.test_client(), headers, root, default, registry


def _finished(client, headers, job_id: str) -> dict:
    """The job once it ended (bounded wait: a run takes a few seconds)."""
    seen = {}

    def done() -> bool:
        seen["job"] = check_envelope(client.get(f"/jobs/{job_id}", headers=headers), 200)["data"]["job"]
        return seen["job"]["state"] in ("succeeded", "failed")

    wait_until(done, timeout_s=120, what=f"job {job_id} ended")
    return seen["job"]


def test_a_retrain_job_runs_in_a_process_of_its_own_and_reports_its_decision(api, corrections, send):
    app, client, headers, root, default, registry = api
    send(registry.store, corrections)
    r = client.post("/models/retrain", json={"shadow": True}, headers=headers)
    body = check_envelope(r, 202, "POST")
    job = body["data"]["job"]
    assert job["state"] == "queued" and job["params"] == {"shadow": True} and job["key_name"] == "ops"
    assert r.headers["Location"] == f"/jobs/{job['id']}" and job["id"] in body["message"]

    finished = _finished(client, headers, job["id"])
    assert finished["state"] == "succeeded", finished["error"]
    assert finished["stage"] == "done" and finished["progress"] == 1.0 and finished["started_at"]
    host, pid = finished["runner"].rsplit(":", 1)
    assert int(pid) != os.getpid()  # trained in its own process, not in this one's request thread
    result = finished["result"]
    assert result["decision"] == "shadowed" and result["parent"] == default
    assert registry.pointers() == (default, result["candidate"])
    assert [(e["action"], e["key_name"]) for e in registry.store.audit(2)] == [("shadowed", "ops"), ("trained", "ops")]
    # the lease is free again: the next one starts
    assert Jobs(registry.store).start("retrain", {})["state"] == "queued"


def test_a_second_retrain_while_one_runs_is_refused_naming_it(api):
    app, client, headers, root, default, registry = api
    running = Jobs(registry.store).start("retrain", {"shadow": False}, "someone")  # another replica's
    for body in (None, {"shadow": True}):
        r = client.post("/models/retrain", json=body, headers=headers) if body else \
            client.post("/models/retrain", headers=headers)
        refused = check_envelope(r, 409, "POST")
        assert refused["data"]["job"]["id"] == running["id"] and running["id"] in refused["message"]
    listed = check_envelope(client.get("/models/retrain", headers=headers), 200)["data"]["jobs"]
    assert [(j["id"], j["state"], j["key_name"]) for j in listed] == [(running["id"], "queued", "someone")]


def test_jobs_and_bodies_that_do_not_exist_or_do_not_fit(api, monkeypatch):
    app, client, headers, root, default, registry = api
    assert check_envelope(client.get("/jobs/nope", headers=headers), 404)["message"] == "No job 'nope'."
    for shadow in ("sometimes", 1, "true", None):  # JSON true or false only
        bad = check_envelope(client.post("/models/retrain", json={"shadow": shadow}, headers=headers), 422, "POST")
        assert bad["data"]["errors"]["shadow"]
    assert check_envelope(client.post("/models/retrain", data="{", content_type="application/json",
                                      headers=headers), 400, "POST")
    monkeypatch.setattr("tagifai_api.retrain.service.os.access", lambda path, mode: False)
    read_only = check_envelope(client.post("/models/retrain", headers=headers), 409, "POST")
    assert "read-only" in read_only["message"] and Jobs(registry.store).recent("retrain") == []


def test_the_lineage_is_shown_with_the_version(api, corrections, send, passing_gate):
    app, client, headers, root, default, registry = api
    send(registry.store, corrections)
    version = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2)["candidate"]
    shown = check_envelope(client.get(f"/models/{version}"), 200)["data"]
    assert shown["lineage"]["parent"] == default and shown["lineage"]["feedback"]["held_out"] == 80
    assert check_envelope(client.get(f"/models/{default}"), 200)["data"]["lineage"] is None


def test_a_shadowed_candidate_is_promoted_only_after_enough_live_texts(make_app, loop, loop_config, corrections, send,
                                                                       passing_gate):
    root, default, registry = loop
    send(registry.store, corrections)
    shadow = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2, shadow=True)["candidate"]
    app = make_app(**loop_config, REGISTRY_POLL_S=0, SHADOW_MIN_TEXTS=40)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {add_key(app, 'ops', 'admin')}"}

    early = check_envelope(client.post("/models/default/promote-shadow", headers=headers), 409, "POST")
    assert early["data"]["decision"] == "kept" and early["data"]["gate"]["failed"] == ["min_shadow_texts"]
    assert "the shadow scored 0 live texts (at least 40 needed)" in early["message"]
    assert registry.pointers() == (default, shadow) and registry.store.audit(1)[0]["action"] == "kept"

    for i in range(10):  # 50 live texts, each scored again by the shadow and logged with its tag
        r = client.post("/predict", json={"texts": [{"text": f"{t} ({i})"} for t in TEXTS]})
        assert r.status_code == 200
    service = app.extensions["tagifai"].service
    service.shadow.close()  # what is queued is scored, then logged
    service.prediction_log.flush()

    promoted = check_envelope(client.post("/models/default/promote-shadow", headers=headers), 200, "POST")["data"]
    assert promoted["decision"] == "promoted" and promoted["gate"]["passed"]
    scored = promoted["shadow"]
    assert scored["scored"] == 50 and 0 <= scored["agreed"] <= 50 and scored["rate"] == round(scored["agreed"] / 50, 4)
    assert promoted["evaluations"]["held_out"]["texts"] == 80
    assert registry.pointers() == (shadow, None) and service.default.version == shadow
    entry = registry.store.audit(1)[0]
    assert (entry["action"], entry["from"], entry["to"], entry["key_name"]) == ("promoted", default, shadow, "ops")
    assert f"the shadow scored 50 live texts (at least 40 needed), agreeing with the default on " \
           f"{scored['agreed'] / 50:.1%}" in entry["reason"]


def test_promoting_with_no_shadow_or_one_not_made_by_retraining_changes_nothing(make_app, registry_root):
    root, first, second = registry_root
    app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {add_key(app, 'ops', 'admin')}"}
    none = check_envelope(client.post("/models/default/promote-shadow", headers=headers), 409, "POST")
    assert none["message"] == "Nothing changed: there is no shadow to promote: `retrain --shadow` sets one."
    assert client.put("/models/shadow", json={"version": second}, headers=headers).status_code == 200
    hand_made = check_envelope(client.post("/models/default/promote-shadow", headers=headers), 409, "POST")
    assert "has no lineage" in hand_made["message"]
    assert app.extensions["tagifai"].service.registry.pointers() == (first, second)


def test_a_jobs_process_yields_the_cpu_to_serving_from_its_start():
    import subprocess
    from pathlib import Path

    from tagifai_api.retrain import jobs

    nice = settings.DEFAULTS["RETRAIN_NICE"]
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        jobs.lower_priority(proc.pid, nice)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == nice == 19
        autogroup = Path(f"/proc/{proc.pid}/autogroup")
        if autogroup.exists():  # its session's group too, or nice would not count against the server's
            assert autogroup.read_text().strip().endswith(f"nice {nice}")
    finally:
        proc.kill()
        proc.wait()
