"""What the prediction log costs: `python -m benchmarks.predlog_cost` (`make bench` runs it after the
service's own benchmark).

- ``http``: ``/predict`` (wrk, 64 connections, 2 Gunicorn workers) with the log off and on (``meta``,
  SQLite), single-text and 100-text bodies. Two servers run side by side; see :func:`http` for the
  two ways they are compared. The target (at least 0.95x) is judged on the paired server CPU a
  request, the steady estimate of a saturated server's throughput; throughput one server at a time
  is printed beside it.
- ``cpu``: in one process, the CPU a text costs to serve (clean, predict, the answer's dicts) beside
  the CPU the log adds for it (its row, the write to SQLite), from ``time.process_time`` over many
  batches of dataset texts: ``serve / (serve + log)``. Without HTTP's cost in it, a lower bound on
  the share the log leaves.
- ``write``: rows per second the store takes in the log writer's batches, on SQLite and, when a
  PostgreSQL server can be started here (``initdb``), on a scratch PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
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


def wrk_start(url: str, seconds: float, bodies: Path, connections: int = 64, threads: int = 2) -> subprocess.Popen:
    """wrk started on POST /predict with ``bodies`` (one JSON per line); :func:`wrk_result` reads it."""
    return subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout",
                             "10s", "-s", str(LUA), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TAGIFAI_BENCH_BODIES": str(bodies)})


def wrk_result(proc: subprocess.Popen, seconds: float) -> dict:
    """The figures of a :func:`wrk_start` run; any answer but 200 fails the run."""
    out, err = proc.communicate(timeout=seconds + 60)
    if proc.returncode != 0 or "JSON" not in out:
        raise RuntimeError(f"wrk failed: {out}\n{err}")
    result = json.loads(out.split("JSON", 1)[1])
    if result["errors_not_200"] or result["errors_timeout"]:
        raise RuntimeError(f"answers other than 200 in a bench run: {result}")
    return result


def wrk(url: str, seconds: float, bodies: Path, connections: int = 64) -> dict:
    """wrk's figures for POST /predict with ``bodies``, run to the end."""
    return wrk_result(wrk_start(url, seconds, bodies, connections), seconds)


def _state(tmp: Path, artifacts: Path, name: str) -> str:
    """A store of its own for one side, whose default is the artifacts' newest version."""
    url = f"sqlite:///{tmp / f'{name}.db'}"
    store = Store(url)
    store.upgrade()
    Registry(store, artifacts).seed(artifacts)
    store.close()
    return url


def _logged(url: str) -> int:
    """The id of the newest row in the log of the store at ``url`` (SQLite): how far its writers got."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"), timeout=10)) as db:
        return db.execute("SELECT coalesce(max(id), 0) FROM prediction_log").fetchone()[0]


def _drained(url: str, timeout_s: float = 10.0) -> None:
    """Wait until the log's writers have written what their queues held: nothing new for longer than
    their flush interval (0.5 s), so the rows a window queued are paid for inside that window."""
    last, since, deadline = _logged(url), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _logged(url)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 0.7:
            return


def _used(server, before: dict[int, float]) -> float:
    after = _cpu_seconds(server.proc.pid)
    return sum(after.get(pid, 0.0) - before.get(pid, 0.0) for pid in after)


def http(artifacts: Path, rounds: int, seconds: float, tmp: Path) -> dict:
    """The log off and on (``meta``, SQLite), two servers of 2 Gunicorn workers each, measured two ways
    per request size:

    - ``paired``: both servers loaded at once (64 connections each), so every moment's load on this
      shared machine falls on both alike; the server CPU a request, off over on, is what the log
      leaves of a saturated server's throughput. Two log-off servers measured so agreed within 2 % a
      round at 32 connections each; at 64, where micro-batching makes a request's CPU depend on its
      server's share of the load, rounds spread by up to 8 %. One at a time, the same server moved
      by 10 % or more between windows a minute apart.
    - ``alternating``: one server at a time, off then on, then on then off, throughput as wrk sees
      it (the figure the target names; noisier, for the reason above).

    A window on the logging side lasts until its writers have written what it queued, so its CPU
    includes the rows it made.
    """
    sides = {"off": "off", "on": "meta"}
    urls = {side: _state(tmp, artifacts, side) for side in sides}
    bodies = {texts: _bodies(tmp, texts) for texts in (1, 100)}
    keys = [(s, t) for s in sides for t in bodies]
    paired_cpu: dict = {k: [] for k in keys}
    paired_rps: dict = {k: [] for k in keys}
    alt_rps: dict = {k: [] for k in keys}
    alt_cpu: dict = {k: [] for k in keys}
    with contextlib.ExitStack() as stack:
        servers = {}
        for side, mode in sides.items():
            env = {"TAGIFAI_DATABASE_URL": urls[side], "TAGIFAI_PREDICTION_LOG": mode,
                   "TAGIFAI_API_KEYS_FILE": str(tmp / "none.json"), "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"m-{side}"),
                   "TAGIFAI_LOG_LEVEL": "WARNING"}
            servers[side] = stack.enter_context(helpers.gunicorn(artifacts, workers=2, env=env))
        for side, server in servers.items():
            for path in bodies.values():
                wrk(server.url, 1.0, path)  # warm-up: both workers' model, connections and log table
        _drained(urls["on"])
        for r in range(rounds):
            for texts, path in bodies.items():
                before = {side: _cpu_seconds(server.proc.pid) for side, server in servers.items()}
                procs = {side: wrk_start(server.url, seconds, path, threads=1) for side, server in servers.items()}
                results = {side: wrk_result(proc, seconds) for side, proc in procs.items()}
                _drained(urls["on"])
                for side, server in servers.items():
                    paired_cpu[(side, texts)].append(_used(server, before[side]) / results[side]["requests"])
                    paired_rps[(side, texts)].append(results[side]["requests"] / results[side]["seconds"])
                for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    server = servers[side]
                    before_one = _cpu_seconds(server.proc.pid)
                    result = wrk(server.url, seconds, path)
                    if side == "on":
                        _drained(urls["on"])
                    alt_rps[(side, texts)].append(result["requests"] / result["seconds"])
                    alt_cpu[(side, texts)].append(_used(server, before_one) / result["requests"])
        dropped = helpers.value(helpers.scrape(servers["on"].url), "tagifai_prediction_log_dropped_total")
    out = {"rounds": rounds, "seconds": seconds, "requests_logged_by_the_on_side": _logged(urls["on"]),
           "texts_dropped_by_the_on_side": int(dropped)}
    med = statistics.median
    for texts in bodies:
        off, on = ("off", texts), ("on", texts)
        out[f"{texts}_text"] = {
            "paired": {
                "cpu_ms_per_request_off": round(med(paired_cpu[off]) * 1e3, 3),
                "cpu_ms_per_request_on": round(med(paired_cpu[on]) * 1e3, 3),
                # what the log leaves of a saturated server's throughput: CPU a request off over on
                "throughput_kept": round(med([a / b for a, b in zip(paired_cpu[off], paired_cpu[on], strict=True)]), 3),
                "round_ratios": [round(a / b, 3) for a, b in zip(paired_cpu[off], paired_cpu[on], strict=True)],
                "rps_off": round(med(paired_rps[off]), 1), "rps_on": round(med(paired_rps[on]), 1)},
            "alternating": {
                "rps_off": round(med(alt_rps[off]), 1), "rps_on": round(med(alt_rps[on]), 1),
                "ratio": round(med(alt_rps[on]) / med(alt_rps[off]), 3),
                "round_ratios": [round(b / a, 3) for a, b in zip(alt_rps[off], alt_rps[on], strict=True)],
                "cpu_ratio": round(med(alt_cpu[off]) / med(alt_cpu[on]), 3)}}
    return out


def table(result: dict) -> str:
    """The figures the prediction log is held to, as lines for a person."""
    lines = []
    http_ = result.get("http")
    if http_:
        lines.append(f"prediction log off vs on (meta, SQLite), 2 workers each, median of {http_['rounds']} rounds:")
        for texts in (1, 100):
            paired, alternating = http_[f"{texts}_text"]["paired"], http_[f"{texts}_text"]["alternating"]
            kept = paired["throughput_kept"]
            lines.append(f"  {texts:>3} text(s), 64 conns: throughput kept with the log on {kept:.3f}x "
                         f"(target >= 0.95x: {'met' if kept >= 0.95 else 'MISSED'}); server CPU a request "
                         f"{paired['cpu_ms_per_request_off']:.3f} ms off, {paired['cpu_ms_per_request_on']:.3f} ms on "
                         f"(both servers loaded at once; rounds {paired['round_ratios']})")
            ratio = alternating["ratio"]
            lines.append(f"      one at a time: {alternating['rps_off']:,.0f} req/s off, "
                         f"{alternating['rps_on']:,.0f} on ({ratio:.3f}x, >= 0.95x: {'yes' if ratio >= 0.95 else 'NO'}"
                         f"; noisier, each window alone on a shared machine; rounds {alternating['round_ratios']})")
        lines.append(f"  the on side logged {http_['requests_logged_by_the_on_side']:,} requests and dropped "
                     f"{http_['texts_dropped_by_the_on_side']} texts")
    if "write" in result:
        w = result["write"]
        lines.append(f"rows written a second by the log's writer: SQLite {w['sqlite_texts_per_s']:,} texts"
                     + (f", PostgreSQL {w['postgresql_texts_per_s']:,} texts" if "postgresql_texts_per_s" in w else
                        ", PostgreSQL not measured (no initdb here)"))
    if "cpu" in result:
        for size, c in result["cpu"].items():
            lines.append(f"in one process, {size.replace('_', ' ')}: {c['serve_cpu_us_per_text']} µs to serve a text, "
                         f"{c['log_cpu_us_per_text']} µs to log it ({c['model_bound_throughput_left']}x left)")
    return "\n".join(lines)


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
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
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
    print(table(result))
    path = save_report("predlog", result)
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
