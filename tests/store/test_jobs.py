"""Jobs and their lease on SQLite and on a real PostgreSQL: one at a time whoever starts them, a crashed
job's lease lapses and the next takes over (recording the dead one failed), a job that lost its lease
cannot go on."""

from __future__ import annotations

import threading
import time

import pytest

from tagifai_api.store.database import Store
from tagifai_api.store.jobs import JobRunningError, Jobs, LeaseLostError


@pytest.fixture
def jobs(store_url):
    store = Store(store_url)
    store.upgrade()
    yield Jobs(store)
    store.close()


def test_a_job_runs_reports_and_frees_the_lease(jobs):
    job = jobs.start("retrain", {"shadow": True}, "ops")
    assert (job["state"], job["progress"], job["params"], job["key_name"]) == ("queued", 0.0, {"shadow": True}, "ops")
    jobs.renew(job["id"], "retrain", state="running", stage="training", progress=0.2, runner="host:1")
    running = jobs.get(job["id"])
    assert (running["state"], running["stage"], running["progress"], running["runner"]) == \
        ("running", "training", 0.2, "host:1")
    assert running["started_at"] and running["heartbeat_at"]
    jobs.finish(job["id"], "retrain", result={"decision": "kept"})
    done = jobs.get(job["id"])
    assert (done["state"], done["stage"], done["progress"], done["result"]) == ("succeeded", "done", 1.0,
                                                                                 {"decision": "kept"})
    failed = jobs.start("retrain", {})
    jobs.finish(failed["id"], "retrain", error="ValueError: no data")
    assert jobs.get(failed["id"])["state"] == "failed" and jobs.get(failed["id"])["error"] == "ValueError: no data"
    assert [j["id"] for j in jobs.recent("retrain")] == [failed["id"], job["id"]]
    assert jobs.get("nope") is None


def test_one_at_a_time_even_when_two_start_at_once(jobs, store_url):
    other = Jobs(Store(store_url))  # another replica's connection
    barrier = threading.Barrier(2)
    started, refused = [], []

    def start(who: Jobs) -> None:
        barrier.wait()
        try:
            started.append(who.start("retrain", {}))
        except JobRunningError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in (jobs, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    other.store.close()
    assert len(started) == len(refused) == 1
    assert refused[0].job["id"] == started[0]["id"] and started[0]["id"] in str(refused[0])


def test_a_crashed_jobs_lease_lapses_and_the_next_takes_over(jobs):
    crashed = jobs.start("retrain", {}, lease_s=0.3)
    jobs.renew(crashed["id"], "retrain", 0.3, state="running")
    with pytest.raises(JobRunningError):
        jobs.start("retrain", {})
    time.sleep(0.5)  # it renews no more: its process died
    lost = jobs.get(crashed["id"])
    assert lost["state"] == "failed" and "lease lapsed" in lost["error"]
    taker = jobs.start("retrain", {})
    assert jobs.get(crashed["id"])["state"] == "failed" and jobs.get(crashed["id"])["finished_at"]
    assert jobs.get(taker["id"])["state"] == "queued"
    # the crashed one, should it wake up, may not go on
    with pytest.raises(LeaseLostError):
        jobs.renew(crashed["id"], "retrain")
    jobs.finish(crashed["id"], "retrain", error="late")  # and its end does not free the other's lease
    with pytest.raises(JobRunningError):
        jobs.start("retrain", {})


def test_a_job_read_while_it_finishes_is_never_called_lost(jobs):
    """Finishing changes the job's state and frees the lease in one transaction; a reader polling
    meanwhile sees it running or finished, never running without its lease (reported failed)."""
    seen = []
    for _ in range(30):
        job = jobs.start("retrain", {})
        jobs.renew(job["id"], "retrain", state="running")
        stop = threading.Event()

        def poll(job_id=job["id"], stop=stop):
            while not stop.is_set():
                seen.append(jobs.get(job_id)["state"])
                seen.append(next(j["state"] for j in jobs.recent("retrain") if j["id"] == job_id))

        reader = threading.Thread(target=poll)
        reader.start()
        time.sleep(0.005)
        jobs.finish(job["id"], "retrain", result={})
        time.sleep(0.005)
        stop.set()
        reader.join(10)
    assert "failed" not in seen
    assert {"running", "succeeded"} <= set(seen)
