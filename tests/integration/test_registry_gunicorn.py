"""The registry under real Gunicorn: a switch, a rollback and the shadow reach every worker (and every
instance sharing the state store) with no signal, and a switch under load fails no request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import requests

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers

pytestmark = pytest.mark.integration

TEXT = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}
SWITCH_DEADLINE_S = 5.0


@pytest.fixture
def admin(registry_root) -> tuple[dict, dict]:
    """``(env, headers)``: an admin key in the folder's store (no setting needed), and the header that sends it."""
    registry = helpers.open_registry(registry_root[0])
    key = KeyStore(registry.store).create("ops", "admin")
    registry.store.close()
    return {}, {"Authorization": f"Bearer {key}"}


def call(server: helpers.Server, method: str, path: str, headers: dict, **kwargs) -> dict:
    r = requests.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def workers(server: helpers.Server) -> set[int]:
    return {p.pid for p in psutil.Process(server.proc.pid).children()}


def every_worker_serves(server: helpers.Server, version: str, since: float,
                        timeout_s: float = 2 * SWITCH_DEADLINE_S) -> float:
    """Seconds from ``since`` until each worker has answered /health/ready with ``version``, asked
    over one kept-alive connection per worker (fresh connections may all reach the same one)."""
    sessions = helpers.one_session_per_worker(server.url, len(workers(server)))
    seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < len(sessions):
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} on {version} after {timeout_s}s"
            for session in sessions:
                data = session.get(f"{server.url}/health/ready", timeout=5).json()["data"]
                if data["model_version"] == version:
                    seen.setdefault(data["pid"], time.monotonic() - since)
            time.sleep(0.01)
    finally:
        for session in sessions:
            session.close()
    return max(seen.values())


def cli(root: Path, *args: str) -> dict:
    """``python -m tagifai_api`` as an operator would run it on any host sharing the directory and the store."""
    proc = subprocess.run([sys.executable, "-m", "tagifai_api", "--artifacts", str(root), *args],
                          capture_output=True, text=True, timeout=60, cwd=helpers.ROOT,
                          env={**os.environ, **helpers.cli_env(root)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_switch_and_rollback_reach_both_workers_and_survive_a_restart(registry_root, tmp_path, admin):
    root, first, second = registry_root
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **admin[0]}
    with helpers.gunicorn(root, workers=2, env=env) as server:
        assert len(workers(server)) == 2
        every_worker_serves(server, first, time.monotonic(), timeout_s=30)  # both have booted
        start = time.monotonic()
        assert call(server, "PUT", "/models/default", admin[1], json={"version": second}) == \
            {"previous": first, "default": second}
        assert every_worker_serves(server, second, start) < SWITCH_DEADLINE_S
        r = requests.post(f"{server.url}/predict", json=TEXT, timeout=10).json()
        assert r["data"]["model_version"] == second
        start = time.monotonic()
        assert call(server, "POST", "/models/default/rollback", admin[1]) == {"previous": second, "default": first}
        assert every_worker_serves(server, first, start) < SWITCH_DEADLINE_S
        # the command line takes the same path, from any host sharing the directory and the store
        start = time.monotonic()
        assert cli(root, "set-default", second) == {"previous": first, "default": second}
        assert every_worker_serves(server, second, start) < SWITCH_DEADLINE_S
        assert call(server, "GET", "/models", {})["history"] == [first]  # the rollback took the first entry
        # every change is in the audit log, whichever worker or host made it, with who and why
        changes = call(server, "GET", "/models/history?limit=3", admin[1])["changes"]
        assert [(c["action"], c["from"], c["to"], c["key_name"]) for c in changes] == [
            ("set_default", first, second, None), ("rollback", second, first, "ops"),
            ("set_default", first, second, "ops")]
    with helpers.gunicorn(root, workers=2, env=env) as server:  # the choice is the store's
        for _ in range(10):
            data = requests.get(f"{server.url}/health/ready", headers={"Connection": "close"}, timeout=5).json()
            assert data["data"]["model_version"] == second


def test_two_instances_sharing_one_store_follow_the_same_default(registry_root, tmp_path, admin):
    root, first, second = registry_root
    env, headers = admin
    with helpers.gunicorn(root, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m1"), **env}) as one, \
            helpers.gunicorn(root, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m2"), **env}) as two:
        assert one.port != two.port
        for server in (one, two):
            every_worker_serves(server, first, time.monotonic(), timeout_s=30)  # every worker has booted
        for source, target, version in ((one, two, second), (two, one, first)):
            start = time.monotonic()
            call(source, "PUT", "/models/default", headers, json={"version": version})
            assert every_worker_serves(target, version, start) < SWITCH_DEADLINE_S
            assert call(target, "GET", "/models", {})["default"] == version
        call(two, "PUT", "/models/shadow", headers, json={"version": second})
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while call(one, "GET", "/models", {})["shadow"] != second:
            assert time.monotonic() < deadline, "the shadow set through one instance never reached the other"
            time.sleep(0.1)


def test_shadow_agreement_is_the_same_from_every_worker(registry_root, tmp_path, admin):
    root, first, second = registry_root
    texts = ["YOLO object detection", "a project about things", "BERT for question answering",
             "Kubernetes pipelines for model deployment", "an idea"]
    log = tmp_path / "gunicorn.log"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_LOG_LEVEL": "INFO", **admin[0]}
    with helpers.gunicorn(root, workers=2, env=env, log_path=log) as server:
        pids = workers(server)
        assert call(server, "PUT", "/models/shadow", admin[1], json={"version": second})["shadow"] == second
        # the other worker reads the shadow within TAGIFAI_REGISTRY_POLL_S (1 s), and says so in its log
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while {e["pid"] for e in log_lines(log) if e.get("message", "").startswith(f"shadow model {second} ")} != pids:
            assert time.monotonic() < deadline, f"not every worker of {sorted(pids)} took the shadow"
            time.sleep(0.1)
        sent = 0
        for i in range(40):
            r = requests.post(f"{server.url}/predict", json={"texts": [{"text": texts[i % len(texts)]}]},
                              headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200 and r.json()["data"]["model_version"] == first
            sent += 1
        deadline = time.monotonic() + 10
        while True:
            data = requests.get(f"{server.url}/models", headers={"Connection": "close"}, timeout=5).json()["data"]
            if data["shadow_agreement"]["scored"] == sent or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert data["shadow"] == second
        agreement = data["shadow_agreement"]
        assert agreement["scored"] == sent and agreement["dropped"] == 0
        assert 0 < agreement["disagree"] < sent and agreement["rate"] == round(agreement["agree"] / sent, 4)
        # every worker gives the same answer (the counts are the shared multiprocess metrics)
        answers = {}
        for _ in range(20):
            d = requests.get(f"{server.url}/models", headers={"Connection": "close"}, timeout=5).json()["data"]
            pid = requests.get(f"{server.url}/health/live", headers={"Connection": "close"}, timeout=5).json()
            answers[pid["data"]["pid"]] = d["shadow_agreement"]
        assert all(a == agreement for a in answers.values())
        scraped = requests.get(f"{server.url}/metrics", timeout=5).text
        assert f'tagifai_shadow_predictions_total{{model_version="{first}",outcome="agree",shadow_version="{second}"}}' \
            in scraped
        assert call(server, "DELETE", "/models/shadow", admin[1]) == {"previous": second, "shadow": None}
        assert call(server, "GET", "/models", {})["shadow"] is None
    with helpers.gunicorn(root, workers=2, env=env) as server:  # cleared for good, restart included
        assert call(server, "GET", "/models", {})["shadow"] is None


def log_lines(log: Path) -> list[dict]:
    """The JSON lines of a Gunicorn log, each with ``at``, its time in seconds since the epoch."""
    out = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "timestamp" in entry:
            entry["at"] = datetime.fromisoformat(entry["timestamp"]).timestamp()
            out.append(entry)
    return out


def test_switching_under_load_fails_no_request(registry_root, tmp_path, admin):
    """64 connections of single-text /predict while the default goes back and forth 10 times."""
    wrk = helpers.require_binary("wrk")
    root, first, second = registry_root
    log = tmp_path / "gunicorn.log"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_LOG_LEVEL": "INFO", **admin[0]}
    switches: list[tuple[float, str]] = []
    put_seconds: list[float] = []
    interval_s, count = 1.5, 10

    def switcher(url):
        begin = time.monotonic()
        with requests.Session() as http:
            for i in range(count):
                time.sleep(max(0.0, begin + 1.0 + i * interval_s - time.monotonic()))  # on schedule, however slow
                target = (second, first)[i % 2]
                sent = datetime.now(timezone.utc).timestamp()  # workers may switch before the answer is back
                r = http.put(f"{url}/models/default", json={"version": target}, headers=admin[1], timeout=30)
                assert r.status_code == 200, r.text
                switches.append((sent, target))
                put_seconds.append(r.elapsed.total_seconds())

    with helpers.gunicorn(root, workers=2, env=env, log_path=log) as server:
        pids = workers(server)
        every_worker_serves(server, first, time.monotonic(), timeout_s=30)  # both have booted
        thread = threading.Thread(target=switcher, args=(server.url,))
        thread.start()
        try:
            proc = subprocess.run(
                [wrk, "-t2", "-c64", f"-d{round(1.0 + count * interval_s + 3)}s", "--timeout", "10s",
                 "-s", str(Path(__file__).with_name("switch.lua")), server.url],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "VERSION_A": first, "VERSION_B": second})
        finally:
            thread.join()
        assert workers(server) == pids  # no worker died or was replaced
    assert proc.returncode == 0, proc.stderr
    assert len(switches) == count
    result = json.loads(proc.stdout.split("JSON", 1)[1])
    assert result["not_200"] == 0 and result["unlabelled"] == 0, result
    assert result["errors_connect"] == result["errors_read"] == result["errors_timeout"] == 0, result
    assert result["from_a"] > 0 and result["from_b"] > 0
    lines = [e for e in log_lines(log) if e.get("logger") == "tagifai_api.access" and e["path"] == "/predict"]
    # wrk stops counting at its deadline; the up to 64 requests then in flight were answered too
    assert result["requests"] <= len(lines) <= result["requests"] + 64
    assert all(e["status"] == 200 and e["model_version"] in (first, second) for e in lines)
    # how long after each switch every worker had the new default in place (its own log line; wrk's
    # keep-alive connections may all have gone to one worker, so its answers cannot show every worker),
    # and how long until the first answer labelled with it
    switched = [e for e in log_lines(log) if e.get("event") == "default_switched"]
    delays, answered = [], []
    for at, target in switches:
        per_worker = {pid: min((e["at"] for e in switched if e["pid"] == pid and e["at"] >= at
                                and e["model_version"] == target), default=None) for pid in pids}
        assert None not in per_worker.values(), f"a worker never switched to {target}: {per_worker}"
        delays.append(max(per_worker.values()) - at)
        answered.append(min((e["at"] for e in lines if e["at"] >= at and e["model_version"] == target),
                            default=float("inf")) - at)
    figures = {"requests": result["requests"], "non_200": result["not_200"], "p50_ms": result["p50_ms"],
               "p99_ms": result["p99_ms"], "switches": len(switches),
               "put_seconds": {"max": round(max(put_seconds), 3),
                               "median": round(sorted(put_seconds)[len(put_seconds) // 2], 3)},
               "every_worker_on_new_default_s": {"max": round(max(delays), 3),
                                                 "median": round(sorted(delays)[len(delays) // 2], 3)},
               "first_answer_from_new_default_s": {"max": round(max(answered), 3),
                                                   "median": round(sorted(answered)[len(answered) // 2], 3)}}
    print("SWITCH-UNDER-LOAD", json.dumps(figures), [round(d, 3) for d in delays])
    assert max(delays) < SWITCH_DEADLINE_S, figures


def test_a_worker_started_while_the_store_is_down_serves_the_default_last_read(registry_root, tmp_path):
    """Gunicorn replaces a worker killed during a PostgreSQL outage: the new worker serves the default
    the host's workers last read, every worker answers /predict, changes are refused with 503, and all
    follow the store again once it is back."""
    root, first, second = registry_root
    with helpers.postgres() as pg:
        store = Store(pg.url)
        store.upgrade()
        # the folder's own SQLite store says first: a worker serving second read it from PostgreSQL
        Registry(store, root).set_default(second, verifier=lambda _: None)
        headers = {"Authorization": f"Bearer {KeyStore(store).create('ops', 'admin')}"}
        store.close()
        env = {"TAGIFAI_DATABASE_URL": pg.url, "TAGIFAI_REGISTRY_POLL_S": "0.2",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
        with helpers.gunicorn(root, workers=2, env=env) as server:
            every_worker_serves(server, second, time.monotonic(), timeout_s=30)
            pg.stop()
            before = workers(server)
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(workers(server) - {victim}) < 2:
                assert time.monotonic() < deadline, "Gunicorn did not replace the killed worker"
                time.sleep(0.1)
            (newcomer,) = workers(server) - before
            sessions = helpers.one_session_per_worker(server.url, 2)
            try:
                for session in sessions:
                    health = session.get(f"{server.url}/health/ready", timeout=10)
                    data = health.json()["data"]
                    assert health.status_code == 200 and data["model_version"] == second, data
                    assert data["store"]["ok"] is False and "unavailable" in data["store"]["error"], data
                    r = session.post(f"{server.url}/predict", json=TEXT, timeout=10)
                    assert r.status_code == 200 and r.json()["data"]["model_version"] == second
                    refused = session.put(f"{server.url}/models/default", json={"version": first}, headers=headers,
                                          timeout=30)
                    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
                assert newcomer in {s.get(f"{server.url}/health/live", timeout=10).json()["data"]["pid"]
                                    for s in sessions}
                pg.start()
                for session in sessions:
                    deadline = time.monotonic() + 30
                    while not session.get(f"{server.url}/health/ready", timeout=10).json()["data"]["store"]["ok"]:
                        assert time.monotonic() < deadline, "a worker never reached the store again"
                        time.sleep(0.1)
            finally:
                for session in sessions:
                    session.close()
            start = time.monotonic()
            assert call(server, "PUT", "/models/default", headers, json={"version": first}) == \
                {"previous": second, "default": first}
            assert every_worker_serves(server, first, start) < SWITCH_DEADLINE_S
