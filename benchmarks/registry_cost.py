"""What the model registry costs: `python -m benchmarks.registry_cost`.

- ``memory``: resident memory of one Gunicorn worker before and after it loads each of three more
  versions (``/predict?version=``), and the median growth per version;
- ``shadow``: client-side p50 and p99 of single-text ``/predict`` (wrk, 2 workers) with no shadow
  and with one, in alternating rounds, at a light and a saturating number of connections; with the
  texts the shadow scored and dropped meanwhile;
- ``watcher``: one poll of the state store by a worker's watcher thread (it runs once a second:
  the change counter), and one re-read of the pointers (after a change), best of several repeats;
- ``request``: CPU time of an in-process single-text ``/predict``, and optionally (``--baseline DIR``,
  a checkout from before the registry) the same in that tree, in alternating rounds.

Every version here is a copy of the given artifacts' default (as ``TAGIFAI_DATABASE_URL``'s store
records it) under a new name: the cost of a version does not depend on which model it holds. The
copies get a SQLite store of their own, inside the temporary artifacts folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import default_version  # noqa: E402
from tagifai_api.ml import artifacts  # noqa: E402
from tests import helpers  # noqa: E402

LUA = ROOT / "tests" / "integration" / "switch.lua"
BODY = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}
_REQUEST_TIMER = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
from tagifai_api import create_app
app = create_app({"ARTIFACTS_DIR": sys.argv[2], "DATABASE_URL": sys.argv[4], "LOG_LEVEL": "WARNING"})
client = app.test_client()
body = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}
for _ in range(300):
    client.post("/predict", json=body)
start = time.process_time()
for _ in range(int(sys.argv[3])):
    client.post("/predict", json=body)
print((time.process_time() - start) / int(sys.argv[3]) * 1e6)
"""


def make_versions(source: Path, dest: Path, extra: int, legacy_pointer: bool = False) -> tuple[str, list[str]]:
    """A fresh artifacts folder with its own store: the source's default (the default there too), and
    ``extra`` copies under new names. ``legacy_pointer`` also writes the DEFAULT file a tree from
    before the store reads."""
    default = default_version(source)
    dest.mkdir(parents=True)
    shutil.copytree(source / default, dest / default)
    registry = helpers.open_registry(dest)
    registry.set_default(default, verifier=lambda _: None)
    registry.store.close()
    if legacy_pointer:
        (dest / "DEFAULT").write_text(default + "\n")
    names = []
    for i in range(extra):
        name = f"v29990101T0000000000{i:02d}Z"
        shutil.copytree(source / default, dest / name)
        manifest = json.loads((dest / name / artifacts.MANIFEST).read_text())
        manifest["version"] = name
        (dest / name / artifacts.MANIFEST).write_text(json.dumps(manifest))
        names.append(name)
    return default, names


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def memory(root: Path, extra: list[str], tmp: Path) -> dict:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "m-memory"), "TAGIFAI_MAX_LOADED_VERSIONS": str(len(extra) + 1)}
    with helpers.gunicorn(root, workers=1, env=env) as server, requests.Session() as http:
        (worker,) = psutil.Process(server.proc.pid).children()
        for _ in range(200):
            http.post(f"{server.url}/predict", json=BODY, timeout=10)
        rss = [_rss_mb(worker.pid)]
        for name in extra:
            for _ in range(200):  # the version's first use loads it; the rest settle its buffers
                assert http.post(f"{server.url}/predict?version={name}", json=BODY, timeout=10).status_code == 200
            rss.append(_rss_mb(worker.pid))
    growth = [b - a for a, b in zip(rss, rss[1:])]
    return {"rss_mb": [round(r, 1) for r in rss], "per_version_mb": [round(g, 2) for g in growth],
            "median_per_version_mb": round(statistics.median(growth), 2)}


def _wrk(url: str, conns: int, seconds: int, default: str, shadow: str) -> dict:
    proc = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url],
        capture_output=True, text=True, timeout=seconds + 60, env={**os.environ, "VERSION_A": default,
                                                                   "VERSION_B": shadow})
    if proc.returncode != 0 or "JSON" not in proc.stdout:
        raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.split("JSON", 1)[1])


def shadow(root: Path, default: str, candidate: str, tmp: Path, rounds: int, seconds: int) -> dict:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp / "m-shadow")}
    out = {}
    registry = helpers.open_registry(root)  # as the command line changes it
    with helpers.gunicorn(root, workers=2, env=env) as server:
        for conns in (4, 64):
            p50 = {"off": [], "on": []}
            p99 = {"off": [], "on": []}
            for _ in range(rounds):
                for state in ("off", "on"):
                    if state == "on":
                        registry.set_shadow(candidate)
                    else:
                        registry.clear_shadow()
                    time.sleep(2.5)  # every worker has read the change (it polls once a second)
                    result = _wrk(server.url, conns, seconds, default, candidate)
                    assert result["not_200"] == 0 and result["from_b"] == 0, result
                    p50[state].append(result["p50_ms"])
                    p99[state].append(result["p99_ms"])
            off, on = statistics.median(p50["off"]), statistics.median(p50["on"])
            out[f"{conns}_connections"] = {
                "p50_ms_no_shadow": round(off, 3), "p50_ms_shadow": round(on, 3),
                "p50_cost_ms": round(on - off, 3), "p50_ratio": round(on / off, 3),
                "p99_ms_no_shadow": round(statistics.median(p99["off"]), 3),
                "p99_ms_shadow": round(statistics.median(p99["on"]), 3)}
        registry.set_shadow(candidate)
        time.sleep(2.5)
        agreement = requests.get(f"{server.url}/models", timeout=10).json()["data"]["shadow_agreement"]
        out["shadow_scored_and_dropped"] = {"scored": agreement["scored"], "dropped": agreement["dropped"]}
        registry.clear_shadow()
    registry.store.close()
    return out


def watcher(root: Path) -> dict:
    """What a worker's watcher costs: its poll of the change counter every second, and the re-read
    of the pointers that follows a change."""
    from tagifai_api.serving.service import ModelService

    service = ModelService(helpers.open_registry(root), poll_s=0, batching=False)
    try:
        poll = min(timeit.repeat(service.registry.store.generation, number=2000, repeat=7)) / 2000
        refresh = min(timeit.repeat(service.refresh, number=2000, repeat=7)) / 2000
    finally:
        service.close()
        service.registry.store.close()
    return {"poll_us": round(poll * 1e6, 2), "share_of_a_core_at_1_per_s": f"{poll:.2e}",
            "reread_us": round(refresh * 1e6, 2)}


def request_cpu(root: Path, baseline: Path | None, rounds: int) -> dict:
    trees = {"now": ROOT, **({"baseline": baseline} if baseline else {})}
    samples: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            run = subprocess.run([sys.executable, "-c", _REQUEST_TIMER, str(tree), str(root), "2000",
                                  helpers.state_url(root)],
                                 capture_output=True, text=True, timeout=300, cwd=tree)
            if run.returncode != 0:
                raise RuntimeError(run.stderr[-2000:])
            samples[name].append(float(run.stdout.split()[-1]))
    out = {f"{name}_cpu_us": round(statistics.median(v), 1) for name, v in samples.items()}
    if baseline:
        out["ratio"] = round(out["now_cpu_us"] / out["baseline_cpu_us"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a source tree from before the registry, for the in-process request comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run")
    parser.add_argument("--only", choices=("memory", "shadow", "watcher", "request"), action="append")
    opts = parser.parse_args()
    parts = opts.only or ["memory", "shadow", "watcher", "request"]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "artifacts"
        default, extra = make_versions(opts.artifacts, root, 3, legacy_pointer=opts.baseline is not None)
        if "memory" in parts:
            result["memory"] = memory(root, extra, tmp)
        if "shadow" in parts:
            result["shadow"] = shadow(root, default, extra[0], tmp, opts.rounds, opts.seconds)
        if "watcher" in parts:
            result["watcher"] = watcher(root)
        if "request" in parts:
            result["request"] = request_cpu(root, opts.baseline, opts.rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
