"""API keys under real Gunicorn with 2 workers: keys made and revoked by the CLI reach every worker
within 5 seconds with no restart; a bad keys file or mode stops the start in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests import helpers

pytestmark = pytest.mark.integration

DEADLINE_S = 5.0


def keys_cli(keys_file: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tagifai_api", "keys", "--file", str(keys_file), *args],
                         cwd=helpers.ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


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


def test_created_and_revoked_keys_reach_both_workers_within_5s(artifacts_dir, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    log = tmp_path / "gunicorn.log"
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_API_KEYS_FILE": str(keys_file), "TAGIFAI_LOG_LEVEL": "INFO"}
    with helpers.gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        r = requests.get(f"{server.url}/args/threshold", headers={"Authorization": "Bearer tagifai_x"}, timeout=10)
        assert r.status_code == 401
        sessions = helpers.one_session_per_worker(server.url)
        key = keys_cli(keys_file, "create", "--name", "probe", "--role", "predict")
        created = probe(server.url, sessions, key, "created", DEADLINE_S + 1.5)
        keys_cli(keys_file, "revoke", "probe")
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
def test_bad_mode_or_keys_file_stops_the_start_in_one_line(tmp_path, env, message):
    (tmp_path / "bad.json").write_text("{not json")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    port = helpers.free_port()
    environ = {**os.environ, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1",
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env}
    out = subprocess.run([str(helpers.VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                         cwd=helpers.ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith(message.format(tmp=tmp_path)) and out.stderr.count("\n") == 1, out.stderr
    assert "Booting worker" not in out.stdout


def test_a_worker_restarted_while_the_keys_file_is_broken_keeps_the_server_up(artifacts_dir, tmp_path):
    """The master refuses a broken file at start; a worker started later (a crash, recycling, TTIN)
    must not take the whole server down: it refuses every key until the file is fixed."""
    keys_file = tmp_path / "api_keys.json"
    key = keys_cli(keys_file, "create", "--name", "ops", "--role", "admin")
    good = keys_file.read_text()
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_API_KEYS_FILE": str(keys_file)}
    auth = {"Authorization": f"Bearer {key}"}
    with helpers.gunicorn(artifacts_dir, workers=1, env=env, log_path=tmp_path / "gunicorn.log") as server:
        worker = requests.get(f"{server.url}/health/ready", timeout=10).json()["data"]["pid"]
        keys_file.write_text("{ broken")
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, (tmp_path / "gunicorn.log").read_text()[-2000:]
            try:
                ready = requests.get(f"{server.url}/health/ready", timeout=5)
                if ready.status_code == 200 and ready.json()["data"]["pid"] != worker:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("no new worker answered")
        refused = requests.get(f"{server.url}/args", headers=auth, timeout=10)
        assert refused.status_code == 401 and refused.json()["status-code"] == 401
        keys_file.write_text(good)
        fixed = time.monotonic()
        while (status := requests.get(f"{server.url}/args", headers=auth, timeout=10).status_code) != 200:
            assert status == 401 and time.monotonic() - fixed < DEADLINE_S, \
                f"the key still answered {status} {time.monotonic() - fixed:.2f}s after the file was fixed"
            time.sleep(0.1)
    assert key not in (tmp_path / "gunicorn.log").read_text()
