"""What a retraining costs the service while it runs: `python -m benchmarks.retrain_cost`.

Real Gunicorn (2 workers, the service's defaults, the prediction log on) on a copy of the default
version with a store of its own holding 300 corrections; wrk puts single-text ``/predict`` load on
it (``--connections``) in windows of ``--seconds``, alternating between a window with nothing else
running and one during which retraining never stops: ``POST /models/retrain`` (the whole dataset
plus the feedback, as the service runs it: its own process, niced), polled until it ends, then the
next, for the whole window. Medians of the rounds: requests per second, p50 and p99, their ratios,
and how many retrainings ran and how long each took. The machine's other load falls on both sides
alike; read the per-round ratios beside the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.predlog_cost import wrk  # noqa: E402
from benchmarks.run import dataset_texts, save_report  # noqa: E402
from tagifai_api import settings  # noqa: E402
from tagifai_api.auth.keys import KeyStore  # noqa: E402
from tagifai_api.feedback.service import FeedbackService  # noqa: E402
from tagifai_api.ml import artifacts, data  # noqa: E402
from tagifai_api.ml.text import join_text  # noqa: E402
from tests import helpers  # noqa: E402


def _folder(source: Path, tmp: Path) -> tuple[Path, str, str]:
    """A copy of the source's newest version, the default of a store of its own with 300 corrections in
    it and an admin key (what a retraining costs does not depend on which version it starts from)."""
    root = tmp / "artifacts"
    version = artifacts.list_versions(source)[-1]
    root.mkdir()
    shutil.copytree(source / version, root / version)
    registry = helpers.open_registry(root)
    registry.set_default(version, verifier=lambda _: None)
    df = data.load_dataset(settings.DATA_FILE).head(300)
    items = [{"text": join_text(t, d) + " (a user's copy)", "tag": tag if tag in (
        "computer-vision", "mlops", "natural-language-processing") else "other"}
             for t, d, tag in zip(df["title"], df["description"], df["tag"], strict=True)]
    for i in range(0, len(items), 100):
        FeedbackService(registry.store).record(items[i:i + 100], "bench")
    key = KeyStore(registry.store).create("bench", "admin")
    registry.store.close()
    return root, version, key


class Retrainer(threading.Thread):
    """Starts a retraining, waits for it to end, starts the next, until stopped; the durations."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.stop = threading.Event()
        self.durations: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            r = requests.post(f"{self.url}/models/retrain", headers=self.headers, timeout=30)
            if r.status_code != 202:
                self.failures.append(r.text)
                time.sleep(0.5)
                continue
            job = r.json()["data"]["job"]["id"]
            while True:
                state = requests.get(f"{self.url}/jobs/{job}", headers=self.headers, timeout=30).json()["data"]["job"]
                if state["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.2)
            if state["state"] == "failed":
                self.failures.append(state["error"])
            self.durations.append(time.perf_counter() - started)


def measure(source: Path, rounds: int, seconds: float, connections: int, tmp: Path) -> dict:
    root, version, key = _folder(source, tmp)
    bodies = tmp / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps({"texts": [{"text": t}]}) for t in dataset_texts()) + "\n")
    env = {"TAGIFAI_LOG_LEVEL": "WARNING", "TAGIFAI_API_KEYS_FILE": str(tmp / "none.json"),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics")}
    sides: dict[str, list[dict]] = {"alone": [], "retraining": []}
    durations: list[float] = []
    with helpers.gunicorn(root, workers=2, env=env) as server:
        wrk(server.url, 2.0, bodies, connections)  # warm-up: both workers, their connections
        for r in range(rounds):
            for side in (("alone", "retraining") if r % 2 == 0 else ("retraining", "alone")):
                retrainer = None
                if side == "retraining":
                    retrainer = Retrainer(server.url, key)
                    retrainer.start()
                    time.sleep(0.5)  # the first job's process is up
                result = wrk(server.url, seconds, bodies, connections)
                if retrainer is not None:
                    retrainer.stop.set()
                    retrainer.join(120)
                    if retrainer.failures:
                        raise RuntimeError(f"retraining failed: {retrainer.failures[:3]}")
                    result["retrainings"] = len(retrainer.durations)
                    durations.extend(retrainer.durations)
                result["rps"] = result["requests"] / result["seconds"]
                sides[side].append(result)
                print(f"round {r + 1} {side}: {result['rps']:.0f} req/s, p99 {result['p99_ms']:.1f} ms"
                      + (f", {result['retrainings']} retrainings" if retrainer else ""), file=sys.stderr)

    def median(side: str, key: str) -> float:
        return statistics.median(x[key] for x in sides[side])

    out = {"rounds": rounds, "seconds": seconds, "connections": connections, "workers": 2, "cpus": os.cpu_count(),
           "load_average": os.getloadavg(), "retrainings": len(durations),
           "retraining_seconds_median": round(statistics.median(durations), 2) if durations else None}
    for side in sides:
        out[side] = {k: round(median(side, k), 2) for k in ("rps", "p50_ms", "p99_ms")}
    out["ratio_rps"] = round(out["retraining"]["rps"] / out["alone"]["rps"], 3)
    out["ratio_p99"] = round(out["retraining"]["p99_ms"] / out["alone"]["p99_ms"], 3)
    out["round_ratios_rps"] = [round(b["rps"] / a["rps"], 3) for a, b in zip(sides["alone"], sides["retraining"],
                                                                                strict=True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path(str(settings.DEFAULTS["ARTIFACTS_DIR"])))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    opts = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("error: wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(opts.artifacts, opts.rounds, opts.seconds, opts.connections, Path(tmp))
    print(json.dumps(result, indent=2))
    path = save_report("retrain-cost", result)
    print(f"written to {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
