"""What the prediction log costs: `python -m benchmarks.predlog_cost` (also run by `make bench`).

- ``http``: requests per second of ``/predict`` (wrk, 64 connections, 2 Gunicorn workers) with the
  log off and on (``meta``, SQLite), single-text and 100-text bodies, in alternating rounds (the
  machine's load moves; alternating puts the same load on both sides), the medians and their ratio;
  beside throughput, the server's CPU seconds a request (master and workers, the log's writer
  threads included): on a shared machine others' load swings requests per second by tens of per
  cent between rounds, while the CPU a request costs moves far less, and on a saturated server
  throughput is its inverse;
- ``cpu``: in one process, the CPU a text costs to serve (clean, predict, the answer's dicts) beside
  the CPU the log adds for it (queueing, the writer's rows, the write to SQLite), from
  ``time.process_time`` over many batches of dataset texts: others' load on the machine barely moves
  it, so it is the steadiest estimate of what the log leaves of a saturated server's throughput where
  the model is most of a request's cost (100 texts): ``serve / (serve + log)``. For one text, HTTP
  (parsing, routing, the envelope) costs the server about ten times the model, so compare the log's
  figure with ``http``'s CPU a request instead;
- ``write``: rows per second the store takes in the log writer's batches, on SQLite and, when a
  PostgreSQL server can be started here (``initdb``), on a scratch PostgreSQL.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import _cpu_seconds, save_report  # noqa: E402
from tagifai_api import settings  # noqa: E402
from tagifai_api.store.database import Store  # noqa: E402
from tagifai_api.store.registry import Registry  # noqa: E402
from tests import helpers  # noqa: E402

LUA = ROOT / "benchmarks" / "predict.lua"
TEXT = "Transfer learning with transformers for text classification."


def _bodies(tmp: Path, texts: int) -> Path:
    path = tmp / f"bodies-{texts}.jsonl"
    lines = [json.dumps({"texts": [{"text": f"{TEXT} project {i} {j}"} for j in range(texts)]}) for i in range(200)]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, seconds: float, bodies: Path, connections: int = 64) -> dict:
    """wrk's figures for POST /predict with ``bodies`` (one JSON per line); any answer but 200 fails the run."""
    proc = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                           "-s", str(LUA), url],
                          capture_output=True, text=True, timeout=seconds + 60,
                          env={**os.environ, "TAGIFAI_BENCH_BODIES": str(bodies)})
    if proc.returncode != 0 or "JSON" not in proc.stdout:
        raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.split("JSON", 1)[1])
    if result["errors_not_200"] or result["errors_timeout"]:
        raise RuntimeError(f"answers other than 200 in a bench run: {result}")
    return result


def _state(tmp: Path, artifacts: Path, name: str) -> str:
    """A store of its own for one side, whose default is the artifacts' newest version."""
    url = f"sqlite:///{tmp / f'{name}.db'}"
    store = Store(url)
    store.upgrade()
    Registry(store, artifacts).seed(artifacts)
    store.close()
    return url


def http(artifacts: Path, rounds: int, seconds: float, tmp: Path) -> dict:
    sides = {"off": "off", "on": "meta"}
    urls = {side: _state(tmp, artifacts, side) for side in sides}
    bodies = {texts: _bodies(tmp, texts) for texts in (1, 100)}
    rps: dict[tuple[str, int], list[float]] = {(s, t): [] for s in sides for t in bodies}
    cpu: dict[tuple[str, int], list[float]] = {(s, t): [] for s in sides for t in bodies}
    written = 0
    for r in range(rounds):
        for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
            env = {"TAGIFAI_DATABASE_URL": urls[side], "TAGIFAI_PREDICTION_LOG": sides[side],
                   "TAGIFAI_API_KEYS_FILE": str(tmp / "none.json"), "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"m-{side}-{r}"),
                   "TAGIFAI_LOG_LEVEL": "WARNING"}
            with helpers.gunicorn(artifacts, workers=2, env=env) as server:
                for texts, path in bodies.items():
                    wrk(server.url, 1.0, path)  # warm-up: both workers' model and connections
                    before = _cpu_seconds(server.proc.pid)
                    result = wrk(server.url, seconds, path)
                    after = _cpu_seconds(server.proc.pid)
                    used = sum(after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after)
                    rps[(side, texts)].append(result["requests"] / result["seconds"])
                    cpu[(side, texts)].append(used / result["requests"])
    store = Store(urls["on"])
    written = sum(1 for _ in store.predictions())
    store.close()
    out = {"rounds": rounds, "seconds": seconds, "rows_logged_by_the_on_side": written}
    for texts in bodies:
        off, on = statistics.median(rps[("off", texts)]), statistics.median(rps[("on", texts)])
        out[f"{texts}_text"] = {"rps_off": round(off, 1), "rps_on": round(on, 1), "ratio": round(on / off, 3),
                                "round_ratios": [round(b / a, 3) for a, b in zip(rps[("off", texts)],
                                                                                   rps[("on", texts)], strict=True)]}
        cpu_off, cpu_on = statistics.median(cpu[("off", texts)]), statistics.median(cpu[("on", texts)])
        out[f"{texts}_text"].update({
            "cpu_ms_per_request_off": round(cpu_off * 1e3, 3), "cpu_ms_per_request_on": round(cpu_on * 1e3, 3),
            # what the log leaves of a saturated server's throughput: CPU a request off over on
            "cpu_ratio": round(cpu_off / cpu_on, 3),
            "round_cpu_ratios": [round(a / b, 3) for a, b in zip(cpu[("off", texts)], cpu[("on", texts)], strict=True)]})
    return out


def _rows_per_second(url: str, batches: int = 20, requests: int = 50, texts: int = 20) -> float:
    """Texts per second the store takes as the log writer hands them over (requests of ``texts`` texts)."""
    store = Store(url)
    store.upgrade()
    item = ("mlops", 0.9, False, None, 60, 8, 1, "0" * 64, None)
    rows = [(time.time(), f"bench-{i}", "v1", None, [item] * texts) for i in range(requests)]
    store.log_requests(rows)  # connection and statement warm
    start = time.perf_counter()
    for _ in range(batches):
        store.log_requests(rows)
    elapsed = time.perf_counter() - start
    store.close()
    return batches * requests * texts / elapsed


def write(tmp: Path) -> dict:
    out = {"sqlite_texts_per_s": round(_rows_per_second(f"sqlite:///{tmp / 'write.db'}"))}
    if shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        with helpers.postgres() as pg:
            out["postgresql_texts_per_s"] = round(_rows_per_second(pg.url))
    return out


def cpu(artifacts: Path, tmp: Path, repeats: int = 20) -> dict:
    """CPU a text costs to serve and what the log adds, per request size, in this process."""
    from tagifai_api.ml import artifacts as saved
    from tagifai_api.ml.data import join_text, load_dataset
    from tagifai_api.ml.predict import Predictor
    from tagifai_api.serving.predlog import PredictionLog
    from tagifai_api.store.registry import Registry as _Registry

    url = _state(tmp, artifacts, "cpu")
    store = Store(url)
    predictor = Predictor(saved.load(artifacts, _Registry(store, artifacts).default_version()))
    df = load_dataset(settings.DATA_FILE)
    texts = [join_text(t, d) for t, d in zip(df["title"], df["description"], strict=True)][:700]
    out = {}
    for size in (1, 100):
        batches = [texts[i:i + size] for i in range(0, len(texts), size)][:max(1, 700 // size)]
        n = sum(len(b) for b in batches)
        log = PredictionLog(store, interval_s=3600.0)
        serve_s = log_s = 0.0
        for r in range(repeats):
            started = time.process_time()
            answered = []
            for i, batch in enumerate(batches):
                cleaned = [predictor.clean(t) for t in batch]
                answered.append((f"cpu-{r}-{i}", batch, cleaned, predictor.predict_clean(cleaned)))
            serve_s += time.process_time() - started
            started = time.process_time()
            for rid, batch, cleaned, results in answered:
                log.add(rid, predictor.version, batch, cleaned, results, predictor)
            log.flush()
            log_s += time.process_time() - started
        log.close()
        serve_us, log_us = serve_s / (repeats * n) * 1e6, log_s / (repeats * n) * 1e6
        out[f"{size}_text"] = {"serve_cpu_us_per_text": round(serve_us, 2), "log_cpu_us_per_text": round(log_us, 2),
                               "model_bound_throughput_left": round(serve_us / (serve_us + log_us), 3)}
    store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path(str(settings.DEFAULTS["ARTIFACTS_DIR"])))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=["cpu", "http", "write"], default=None)
    opts = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if opts.only in (None, "cpu"):
            result["cpu"] = cpu(opts.artifacts, Path(tmp))
        if opts.only in (None, "write"):
            result["write"] = write(Path(tmp))
        if opts.only in (None, "http"):
            result["http"] = http(opts.artifacts, opts.rounds, opts.seconds, Path(tmp))
    print(json.dumps(result, indent=2))
    path = save_report("predlog", result)
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
