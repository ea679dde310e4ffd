"""/metrics under real Gunicorn: counts are exact across workers, worker recycling and restarts.

Multiprocess mode has three ways to go wrong that a single-process test cannot see: a scrape
served by one worker missing the other's samples, a recycled worker's counts vanishing (or being
counted twice while they are folded into the archive), and files of a previous run being added in.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.helpers import PREDICT_COUNT, ROOT, VENV_BIN, free_port, gunicorn, open_registry, scrape, value

TEXTS = ["Transfer learning with transformers for text classification.", "GANs that generate faces."]


def predict_many(url: str, n: int, concurrency: int = 4) -> None:
    """``n`` predictions, each on a new connection (no session), so the kernel spreads them over workers."""

    def one(i: int) -> None:
        r = requests.post(f"{url}/predict", json={"texts": [{"text": t} for t in TEXTS]},
                          headers={"X-Request-ID": f"m-{i}", "Connection": "close"}, timeout=10)
        assert r.status_code == 200, r.text

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))


def access_pids(log_path: Path, path: str = "/predict") -> Counter:
    """Requests per worker pid, from the app's JSON access lines."""
    pids = Counter()
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("logger") == "tagifai_api.access" and entry.get("path") == path:
            pids[entry["worker_pid"]] += 1
    return pids


def db_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.db"))


def stale_counter(directory: Path) -> Path:
    """A counter file as a worker of a previous run would have left it: 1000 predictions."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "counter_99999.db"
    d = MmapedDict(str(path))
    key = mmap_key("tagifai_predictions", "tagifai_predictions_total", ["model_version", "tag"],
                   ["stale", "computer-vision"], "Predictions served, by tag.")
    d.write_value(key, 1000.0, 0.0)
    d.close()
    return path


@pytest.mark.integration
def test_one_scrape_counts_every_request_of_both_workers(artifacts_dir, tmp_path):
    mp_dir = tmp_path / "metrics"
    stale = stale_counter(mp_dir)
    other = mp_dir / "operator-notes.txt"  # not a sample file: left alone
    other.write_text("kept")
    log = tmp_path / "gunicorn.log"
    n = 40
    # Workers sharing one listening socket let the first one to wake take every idle-time connection;
    # a socket per worker (SO_REUSEPORT) spreads fresh connections over both by their address hash.
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "GUNICORN_CMD_ARGS": "--reuse-port"}
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        assert not stale.exists(), "the previous run's files must be removed at start"
        assert other.read_text() == "kept"
        predict_many(server.url, n)
        samples = scrape(server.url)

    pids = access_pids(log)
    assert sum(pids.values()) == n
    assert len(pids) == 2, f"requests did not reach both workers: {pids}"
    assert value(samples, *PREDICT_COUNT) == n
    assert value(samples, "tagifai_predictions_total") == n * len(TEXTS)
    assert value(samples, "tagifai_predictions_total", {"model_version": "stale"}) == 0
    assert value(samples, "tagifai_request_texts_count") == n


@pytest.mark.integration
def test_worker_recycling_loses_and_repeats_nothing(artifacts_dir, tmp_path):
    mp_dir = tmp_path / "metrics"
    log = tmp_path / "gunicorn.log"
    n = 150
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir), "GUNICORN_MAX_REQUESTS": "20",
           "GUNICORN_MAX_REQUESTS_JITTER": "1", "TAGIFAI_CACHE_SIZE": "0"}  # every text reaches the model
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=log) as server:
        predict_many(server.url, n)
        samples = scrape(server.url)
        files = db_files(mp_dir)

    pids = access_pids(log)
    assert sum(pids.values()) == n
    assert len(pids) >= n // 25, f"workers were not recycled: {pids}"  # each serves ~21 requests
    assert value(samples, *PREDICT_COUNT) == n
    assert value(samples, "tagifai_predictions_total") == n * len(TEXTS)
    assert value(samples, "tagifai_batch_texts_sum") == n * len(TEXTS)  # histograms are folded too

    # the dead workers' files were folded into the archives: at most the two live workers plus one
    # being replaced right now have files of their own
    archives = [f for f in files if f.endswith("_archive.db")]
    assert set(archives) <= {"counter_archive.db", "histogram_archive.db"}
    assert "counter_archive.db" in archives
    owners = {f.rsplit("_", 1)[1][:-3] for f in files if f not in archives}
    assert len(owners) <= 3, files
    assert len(files) <= 3 * 5 + 2, files


def test_gunicorn_check_config(tmp_path):
    """The config file loads and the app imports, even before the metrics directory exists."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PORT=str(free_port()), TMPDIR=str(tmp_path),
               PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
               TAGIFAI_DATABASE_URL=f"sqlite:///{tmp_path / 'state.db'}")  # not the checkout's var/tagifai.db
    env.pop("GUNICORN_BIND", None)
    result = subprocess.run([str(VENV_BIN / "gunicorn"), "--check-config", "-c", "gunicorn.conf.py", "wsgi:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_error_cache_and_fallback_counters_move_exactly(artifacts_copy, tmp_path):
    """tagifai_errors_total by type, the cache's hits and misses, and the low-confidence count
    equal what the requests made happen, summed over both workers."""
    from tagifai_api.auth.keys import KeyStore

    registry = open_registry(artifacts_copy)
    key = KeyStore(registry.store).create("metrics", "predict")
    registry.store.close()
    env = {"TAGIFAI_CACHE_SIZE": "64", "TAGIFAI_MAX_CONTENT_LENGTH": "4096", "TAGIFAI_AUTH": "all"}
    auth = {"Authorization": f"Bearer {key}"}
    errors = {  # type: (how many, status, request)
        "ValidationError": (3, 422, dict(method="POST", path="/predict", json={"texts": []})),
        "BadRequest": (2, 400, dict(method="POST", path="/predict", data=b'{"texts": [',
                                    headers={"Content-Type": "application/json"})),
        "UnsupportedMediaType": (1, 415, dict(method="POST", path="/predict", data=b"texts",
                                              headers={"Content-Type": "text/plain"})),
        "NotFound": (4, 404, dict(method="GET", path="/no/such/route")),
        "NotFoundError": (3, 404, dict(method="GET", path="/args/no_such_arg")),
        "MethodNotAllowed": (2, 405, dict(method="GET", path="/predict")),
        "RequestEntityTooLarge": (1, 413, dict(method="POST", path="/predict", data=b"x" * 5000,
                                               headers={"Content-Type": "application/json"})),
        "UnauthorizedError": (2, 401, dict(method="GET", path="/args", headers={})),
    }
    low_confidence = 0

    def predict(session: requests.Session, texts: list[str]) -> None:
        nonlocal low_confidence
        r = session.post(f"{server.url}/predict", json={"texts": [{"text": t} for t in texts]}, timeout=10)
        assert r.status_code == 200, (r.text, (tmp_path / "gunicorn.log").read_text()[-4000:])
        for p in r.json()["data"]["predictions"]:
            low_confidence += p["low_confidence"]
            assert p["predicted_tag"] == "other" or not p["low_confidence"]

    with gunicorn(artifacts_copy, workers=2, env=env, log_path=tmp_path / "gunicorn.log") as server:
        before = scrape(server.url)
        with requests.Session() as session:  # one kept-alive connection: one worker, one cache
            session.headers.update(auth)
            for text, times in (("Object detection with YOLO on video frames.", 5),
                                ("Machine translation with transformers.", 3)):
                for _ in range(times):
                    predict(session, [text])
        with requests.Session() as session:
            session.headers.update(auth)
            predict(session, ["hello", "qwxz vbnm plok", "a", TEXTS[0]])  # the first three fall back to other
        for kind, (times, status, call) in errors.items():
            for _ in range(times):
                headers = call.get("headers", auth if kind != "UnauthorizedError" else {})
                headers = {**auth, **headers} if kind != "UnauthorizedError" else headers
                r = requests.request(call["method"], f"{server.url}{call['path']}", json=call.get("json"),
                                     data=call.get("data"), headers=headers, timeout=10)
                assert r.status_code == status, (kind, r.text)
        after = scrape(server.url)

    def delta(name: str, labels: dict | None = None) -> float:
        return value(after, name, labels) - value(before, name, labels)

    for kind, (times, _, _) in errors.items():
        assert delta("tagifai_errors_total", {"type": kind}) == times, kind
    assert delta("tagifai_errors_total") == sum(times for times, _, _ in errors.values())
    assert delta("tagifai_cache_misses_total") == 2 + 4  # each text once; the last request's four are new
    assert delta("tagifai_cache_hits_total") == 4 + 2
    assert low_confidence >= 3
    assert delta("tagifai_low_confidence_predictions_total") == low_confidence
