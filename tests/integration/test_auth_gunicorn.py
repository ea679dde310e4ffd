"""API keys under real Gunicorn with 2 workers, on a SQLite store and on a real PostgreSQL: keys made and
revoked by the CLI reach every worker within 2 seconds with no restart; a worker restarted while the
store is down serves the keys this host last read; a bad mode or old keys file stops the start in one
line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tagifai_api.ml import artifacts
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers
from tests.helpers import keys_command

pytestmark = pytest.mark.integration

#: a change reaches every worker at its watcher's next poll (TAGIFAI_REGISTRY_POLL_S, 1 s)
DEADLINE_S = 2.0


@pytest.fixture
def served_store(store_url, artifacts_dir) -> str:
    """The test's store (SQLite, then PostgreSQL), its default the session folder's version, no key yet."""
    store = Store(store_url)
    store.upgrade()
    Registry(store, artifacts_dir).set_default(artifacts.list_versions(artifacts_dir)[-1], verifier=lambda _: None)
    store.close()
    return store_url


def probe(url: str, sessions: list[requests.Session], key: str, label: str,
          seconds: float) -> list[tuple[str, float, int]]:
    """(request id, seconds since start, status) of requests sent on each session in turn for ``seconds``."""
    start = time.monotonic()
    sent = []
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        rid = f"{label}-{n}"
        r = sessions[n % len(sessions)].get(f"{url}/args/threshold", timeout=10,
                                            headers={"Authorization": f"Bearer {key}", "X-Request-ID": rid})
        sent.append((rid, elapsed, r.status_code))
        n += 1
        time.sleep(0.03)
    return sent


def by_worker(log: Path, sent: list[tuple[str, float, int]]) -> dict[int, list[tuple[float, int]]]:
    pids = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("logger") == "tagifai_api.access":
            pids[entry["request_id"]] = entry["worker_pid"]
    out: dict[int, list[tuple[float, int]]] = {}
    for rid, elapsed, status in sent:
        out.setdefault(pids[rid], []).append((elapsed, status))
    return out


def settled_after(answers: list[tuple[float, int]], status: int) -> float:
    """Seconds after which every answer had ``status`` (the time of the last other answer)."""
    return max((t for t, s in answers if s != status), default=0.0)


def test_created_and_revoked_keys_reach_both_workers_within_2s(artifacts_dir, served_store, tmp_path):
    """The CLI writes to the store and exits; each worker's watcher reads the change at its next poll.
    Timed from the moment the command has exited, so from after the change is committed."""
    log = tmp_path / "gunicorn.log"
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_DATABASE_URL": served_store, "TAGIFAI_LOG_LEVEL": "INFO"}
    with helpers.gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        r = requests.get(f"{server.url}/args/threshold", headers={"Authorization": "Bearer tagifai_x"}, timeout=10)
        assert r.status_code == 401
        sessions = helpers.one_session_per_worker(server.url)
        key = keys_command(served_store, "create", "--name", "probe", "--role", "predict")
        created = probe(server.url, sessions, key, "created", DEADLINE_S + 1.5)
        keys_command(served_store, "revoke", "probe")
        revoked = probe(server.url, sessions, key, "revoked", DEADLINE_S + 1.5)
    for sent, status in ((created, 200), (revoked, 401)):
        workers = by_worker(log, sent)
        assert len(workers) == 2, f"one worker answered every request: {workers.keys()}"
        for pid, answers in workers.items():
            late = [a for a in answers if a[0] > DEADLINE_S]
            assert late, f"worker {pid} answered nothing after {DEADLINE_S}s"
            took = settled_after(answers, status)
            assert took <= DEADLINE_S, f"worker {pid} still answered otherwise {took:.2f}s after the change"
            print(f"worker {pid}: every answer {status} from {took:.2f}s after the change")
    assert not any(key in line for line in log.read_text().splitlines())


@pytest.mark.parametrize(("env", "message"), [
    ({"TAGIFAI_AUTH": "sometimes"}, "error: TAGIFAI_AUTH: expected one of admin, all, off, got 'sometimes'"),
    ({"TAGIFAI_API_KEYS_FILE": "{tmp}/bad.json"}, "error: TAGIFAI_API_KEYS_FILE: keys file {tmp}/bad.json is not valid JSON"),
])
def test_bad_mode_or_old_keys_file_stops_the_start_in_one_line(tmp_path, env, message):
    """The old keys file is read to be imported into an empty store, here a new one: broken, the master
    refuses it before any worker starts."""
    (tmp_path / "bad.json").write_text("{not json")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    port = helpers.free_port()
    environ = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
               "TAGIFAI_DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env}
    out = subprocess.run([str(helpers.VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                         cwd=helpers.ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(message.format(tmp=tmp_path)) and out.stderr.count("\n") == 1, out.stderr
    assert "Booting worker" not in out.stdout


def test_a_worker_restarted_while_the_store_is_down_serves_the_keys_this_host_last_read(
        artifacts_dir, served_store, store_url, request, tmp_path):
    """The master checked the store at start; a worker started later (a crash, recycling, TTIN) while
    the store is down must neither take the server down nor refuse every key: it serves the keys a
    worker of this host last read, and follows the store once it answers."""
    pg = request.getfixturevalue("pg_server") if store_url.startswith("postgresql") else None
    key = keys_command(served_store, "create", "--name", "ops", "--role", "admin")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_DATABASE_URL": served_store}
    auth = {"Authorization": f"Bearer {key}"}
    log = tmp_path / "gunicorn.log"
    with helpers.gunicorn(artifacts_dir, workers=1, env=env, log_path=log) as server:
        assert requests.get(f"{server.url}/args", headers=auth, timeout=10).status_code == 200
        worker = requests.get(f"{server.url}/health/ready", timeout=10).json()["data"]["pid"]
        with helpers.store_outage(served_store, pg):
            os.kill(worker, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert server.proc.poll() is None, log.read_text()[-2000:]
                try:
                    ready = requests.get(f"{server.url}/health/ready", timeout=5)
                    if ready.status_code == 200 and ready.json()["data"]["pid"] != worker:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail(f"no new worker answered: {log.read_text()[-2000:]}")
            assert ready.json()["data"]["store"]["ok"] is False
            served = requests.get(f"{server.url}/args", headers=auth, timeout=10)
            assert served.status_code == 200, served.text
            refused = requests.get(f"{server.url}/args", headers={"X-API-Key": "tagifai_" + "A" * 43}, timeout=10)
            assert refused.status_code == 401 and refused.json()["status-code"] == 401
        keys_command(served_store, "revoke", "ops")
        revoked = time.monotonic()
        while (status := requests.get(f"{server.url}/args", headers=auth, timeout=10).status_code) != 401:
            assert status == 200 and time.monotonic() - revoked < DEADLINE_S, \
                f"the key still answered {status} {time.monotonic() - revoked:.2f}s after it was revoked"
            time.sleep(0.1)
    text = log.read_text()
    assert "starting with the 1 keys this host last read" in text
    assert key not in text
