"""Two Gunicorn instances (2 workers each) sharing one real PostgreSQL: switches and key changes made
through one instance or the CLI reach the other within 2 s under load, with no failed request;
/predict keeps answering while PostgreSQL is down; two admins switching at once leave one story."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import psutil
import pytest
import requests

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers

pytestmark = pytest.mark.integration

PROPAGATION_S = 2.0
LUA = Path(__file__).with_name("switch.lua")
TEXT = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}


@pytest.fixture
def pg():
    """A PostgreSQL cluster of this test's own (some tests stop and start it)."""
    with helpers.postgres() as server:
        yield server


@pytest.fixture
def shared(request, registry_root, tmp_path):
    """``(root, first, second, env, admin_headers)``: the versions, a store whose default is ``first``
    (on this test's PostgreSQL, or with ``@pytest.mark.parametrize("shared", ["sqlite"], indirect=True)``
    the SQLite file both instances of one host share), the environment both instances run with, and an
    admin key's header."""
    root, first, second = registry_root
    url = helpers.state_url(root) if getattr(request, "param", None) == "sqlite" else request.getfixturevalue("pg").url
    store = Store(url)
    store.upgrade()
    Registry(store, root).set_default(first, verifier=lambda _: None)
    key = KeyStore(store).create("ops", "admin")
    store.close()
    env = {"TAGIFAI_DATABASE_URL": url, "TAGIFAI_LOG_LEVEL": "INFO"}
    return root, first, second, env, {"Authorization": f"Bearer {key}"}


def _log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "timestamp" in entry:
            entry["at"] = datetime.fromisoformat(entry["timestamp"]).timestamp()
            out.append(entry)
    return out


def _workers(server: helpers.Server) -> set[int]:
    return {p.pid for p in psutil.Process(server.proc.pid).children()}


def _instances(stack: ExitStack, root: Path, env: dict, tmp_path: Path) -> list[tuple[helpers.Server, Path]]:
    out = []
    for name in ("a", "b"):
        log = tmp_path / f"gunicorn-{name}.log"
        server = stack.enter_context(helpers.gunicorn(
            root, workers=2, log_path=log, env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{name}")}))
        out.append((server, log))
    return out


def _wrk(server: helpers.Server, seconds: float, first: str, second: str) -> subprocess.Popen:
    """32 connections of single-text /predict (two instances: 64 in all), counted by status and version."""
    wrk = helpers.require_binary("wrk")
    return subprocess.Popen([wrk, "-t1", "-c32", f"-d{round(seconds)}s", "--timeout", "10s", "-s", str(LUA),
                             server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VERSION_A": first, "VERSION_B": second})


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return json.loads(out.split("JSON", 1)[1])


def _switched_at(log: Path, pids: set[int], target: str, since: float) -> float:
    """When the last of ``pids`` logged that it serves ``target``, after ``since``."""
    switched = [e for e in _log_lines(log) if e.get("event") == "default_switched"]
    times = [min((e["at"] for e in switched if e["pid"] == pid and e["at"] >= since and e["model_version"] == target),
                 default=None) for pid in pids]
    assert None not in times, f"a worker never switched to {target}"
    return max(times)


@pytest.mark.parametrize("shared", ["postgresql", "sqlite"], indirect=True)
def test_switches_through_one_instance_reach_the_other_within_2s_under_load(shared, tmp_path):
    root, first, second, env, admin = shared
    backend = "sqlite" if env["TAGIFAI_DATABASE_URL"].startswith("sqlite") else "postgresql"
    count, interval_s = 10, 2.0
    switches: list[tuple[float, str]] = []
    with ExitStack() as stack:
        (a, log_a), (b, log_b) = _instances(stack, root, env, tmp_path)
        pids_b = _workers(b)
        loads = [_wrk(server, 2.0 + count * interval_s + 2, first, second) for server in (a, b)]
        begin = time.monotonic()
        with requests.Session() as http:
            for i in range(count):
                time.sleep(max(0.0, begin + 1.5 + i * interval_s - time.monotonic()))
                target = (second, first)[i % 2]
                sent = time.time()
                r = http.put(f"{a.url}/models/default", json={"version": target, "reason": f"switch {i}"},
                             headers=admin, timeout=30)
                assert r.status_code == 200, r.text
                switches.append((sent, target))
        results = [_result(proc) for proc in loads]
        assert _workers(b) == pids_b
        history = requests.get(f"{b.url}/models/history?limit=10", headers=admin, timeout=10).json()["data"]
    for result in results:
        assert result["not_200"] == 0 and result["unlabelled"] == 0, result
        assert result["errors_connect"] == result["errors_read"] == result["errors_timeout"] == 0, result
        assert result["from_a"] > 0 and result["from_b"] > 0, result
    delays = [_switched_at(log_b, pids_b, target, at) - at for at, target in switches]
    print("STORE-PROPAGATION", backend, json.dumps({
        "requests": [r["requests"] for r in results], "non_200": [r["not_200"] for r in results],
        "median_s": round(sorted(delays)[len(delays) // 2], 3), "max_s": round(max(delays), 3)}))
    assert max(delays) < PROPAGATION_S, delays
    assert [c["reason"] for c in history["changes"]] == [f"switch {i}" for i in reversed(range(count))]
    assert {c["key_name"] for c in history["changes"]} == {"ops"}


def test_a_key_revoked_through_the_cli_is_refused_by_both_instances_within_2s(shared, tmp_path):
    root, first, second, env, admin = shared
    with ExitStack() as stack:
        servers = [server for server, _ in _instances(stack, root, env, tmp_path)]
        created = subprocess.run([sys.executable, "-m", "tagifai_api", "keys", "create", "--name", "ci",
                                  "--role", "admin"], capture_output=True, text=True, timeout=60, cwd=helpers.ROOT,
                                 env={**os.environ, "TAGIFAI_DATABASE_URL": env["TAGIFAI_DATABASE_URL"]})
        assert created.returncode == 0, created.stderr
        headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
        sessions = [s for server in servers for s in helpers.one_session_per_worker(server.url, 2)]
        urls = [server.url for server in servers for _ in range(2)]

        def answers() -> list[int]:
            return [s.get(f"{url}/models/history", headers=headers, timeout=5).status_code
                    for s, url in zip(sessions, urls, strict=True)]

        helpers.wait_until(lambda: answers() == [200] * 4, timeout_s=PROPAGATION_S + 3, what="the new key everywhere")
        revoked = subprocess.run([sys.executable, "-m", "tagifai_api", "keys", "revoke", "ci"], capture_output=True,
                                 text=True, timeout=60, cwd=helpers.ROOT,
                                 env={**os.environ, "TAGIFAI_DATABASE_URL": env["TAGIFAI_DATABASE_URL"]})
        assert revoked.returncode == 0, revoked.stderr
        since = time.monotonic()
        helpers.wait_until(lambda: answers() == [401] * 4, timeout_s=PROPAGATION_S + 3, what="the revocation everywhere")
        took = time.monotonic() - since
        for s in sessions:
            s.close()
    print("KEY-REVOCATION postgresql", round(took, 3))
    assert took < PROPAGATION_S


def test_predict_keeps_answering_while_postgres_is_down_and_writes_resume_after(pg, shared, tmp_path):
    root, first, second, env, admin = shared
    with ExitStack() as stack:
        (a, log_a), (b, _) = _instances(stack, root, env, tmp_path)
        pids = _workers(a) | _workers(b)
        loads = [_wrk(server, 12, first, second) for server in (a, b)]
        time.sleep(2)
        pg.stop()
        stopped = time.monotonic()
        refused = requests.put(f"{a.url}/models/default", json={"version": second}, headers=admin, timeout=30)
        ready = requests.get(f"{b.url}/health/ready", timeout=10)
        helpers.wait_until(lambda: not requests.get(f"{b.url}/health/ready", timeout=5).json()["data"]["store"]["ok"],
                           timeout_s=10, what="the store reported down")
        time.sleep(max(0.0, stopped + 4 - time.monotonic()))
        pg.start()
        results = [_result(proc) for proc in loads]
        # the next write succeeds without restarting anything
        helpers.wait_until(lambda: requests.put(f"{a.url}/models/default", json={"version": second},
                                                headers=admin, timeout=30).status_code == 200,
                           timeout_s=15, what="a write after PostgreSQL came back")
        every = [s for server in (a, b) for s in helpers.one_session_per_worker(server.url, 2)]
        urls = [server.url for server in (a, b) for _ in range(2)]
        helpers.wait_until(lambda: all(s.get(f"{u}/health/ready", timeout=5).json()["data"]["model_version"] == second
                                       for s, u in zip(every, urls, strict=True)),
                           timeout_s=PROPAGATION_S + 3, what="every worker on the new default")
        for s in every:
            s.close()
        assert _workers(a) | _workers(b) == pids  # no worker died
        metrics = requests.get(f"{a.url}/metrics", timeout=10).text
    assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
    assert "state store is unavailable" in refused.json()["message"]
    assert ready.status_code == 200
    for result in results:
        assert result["not_200"] == 0 and result["requests"] > 0, result
        assert result["errors_connect"] == result["errors_read"] == result["errors_timeout"] == 0, result
    assert 'tagifai_store_errors_total{operation="set_default"}' in metrics
    print("POSTGRES-OUTAGE", json.dumps({"requests": [r["requests"] for r in results],
                                         "non_200": [r["not_200"] for r in results],
                                         "write_while_down": refused.status_code}))


def test_two_admins_switching_at_once_through_two_replicas_leave_one_consistent_story(shared, tmp_path, pg):
    root, first, second, env, admin = shared
    third = helpers.copy_version(root, second, "v29990101T000000000000Z")
    with ExitStack() as stack:
        (a, _), (b, _) = _instances(stack, root, env, tmp_path)
        barrier = threading.Barrier(2)
        answers = {}

        def switch(server, version):
            barrier.wait()
            answers[version] = requests.put(f"{server.url}/models/default", json={"version": version},
                                            headers=admin, timeout=30)

        threads = [threading.Thread(target=switch, args=(a, second)), threading.Thread(target=switch, args=(b, third))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r.status_code == 200 for r in answers.values()), {v: r.text for v, r in answers.items()}
        store = Store(pg.url)
        recorded, _ = store.pointers()
        history = [e["version"] for e in store.history()]
        store.close()
        assert recorded in (second, third)
        loser = third if recorded == second else second
        assert history == [first, loser]  # both switches happened, one after the other
        every = [s for server in (a, b) for s in helpers.one_session_per_worker(server.url, 2)]
        urls = [server.url for server in (a, b) for _ in range(2)]
        helpers.wait_until(lambda: {s.get(f"{u}/health/ready", timeout=5).json()["data"]["model_version"]
                                    for s, u in zip(every, urls, strict=True)} == {recorded},
                           timeout_s=PROPAGATION_S + 3, what="every worker on the recorded default")
        for s in every:
            s.close()
