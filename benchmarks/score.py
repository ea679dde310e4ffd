"""`make bench-score`: the `score` command on a large file, against the fast path's own rate.

The input (1,000,000 rows by default) is made by repeating the dataset's records into a temporary
directory. Each round measures, one right after the other so that they share the machine's load,
the in-process fast-path rate at batch 100 (as `make bench` does: a fresh process, texts cleaned
and scored) and a full `score` run per worker count: wall time, rows/s, CPU seconds of the whole
process tree and the peak of its summed RSS. The target is 0.8 x workers x that fast-path rate.
Results: a table on stdout and ``reports/bench/score-<time>.json``.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402
from tagifai_api import settings  # noqa: E402

TARGET_SHARE = 0.8


def make_input(path: Path, rows: int) -> None:
    """``rows`` records of the dataset, repeated in order, under its header."""
    with open(settings.DATA_FILE, newline="", encoding="utf-8") as fh:
        records = list(csv.reader(fh))
    header, body = records[0], records[1:]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for i in range(rows):
            writer.writerow(body[i % len(body)])


def _fast_worker(args) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second) of the fast path at batch 100."""
    root, seconds = args
    os.environ["OMP_NUM_THREADS"] = "1"
    fn = bench._fast_fn(bench.load_default(Path(root)))
    batches = bench._batches(bench.dataset_texts(), 100)
    for b in batches[:3]:
        fn(b)
    done, i = 0, 0
    wall, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        fn(batches[i % len(batches)])
        done += 100
        i += 1
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def fast_rate(root: Path, seconds: float) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        wall, cpu = pool.apply(_fast_worker, ((str(root), seconds),))
    return {"texts_per_s": round(wall), "texts_per_cpu_s": round(cpu)}


def run_score(root: Path, src: Path, out: Path, workers: int, batch_size: int) -> dict:
    """One `score` run: wall time, CPU time of every process it started, peak summed RSS."""
    cmd = [sys.executable, "-m", "tagifai_api", "--artifacts", str(root), "score", str(src), "--output", str(out),
           "--workers", str(workers), "--batch-size", str(batch_size), "--quiet", "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    sampler = bench.RssSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join(1)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise RuntimeError(f"score exited with {code}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mb": round(sampler.peak / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--inproc-seconds", type=float, default=5.0)
    parser.add_argument("--artifacts", type=Path, default=Path(settings.DEFAULTS["ARTIFACTS_DIR"]))
    opts = parser.parse_args()
    worker_counts = [int(w) for w in opts.workers.split(",")]
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": opts.rows,
              "batch_size": opts.batch_size, "cpus": os.cpu_count(),
              "model_version": bench.default_version(opts.artifacts), "rounds": []}
    with tempfile.TemporaryDirectory(prefix="tagifai-bench-score-") as tmp:
        src = Path(tmp) / "projects.csv"
        print(f"writing {opts.rows:,} rows ...", file=sys.stderr)
        make_input(src, opts.rows)
        result["input_mb"] = round(src.stat().st_size / 2**20, 1)
        for r in range(opts.rounds):
            for workers in worker_counts:
                print(f"round {r + 1}: fast path, then score --workers {workers} ...", file=sys.stderr)
                fast = fast_rate(opts.artifacts, opts.inproc_seconds)
                run = run_score(opts.artifacts, src, Path(tmp) / "out.csv", workers, opts.batch_size)
                run["rows_per_s"] = round(opts.rows / run["seconds"])
                run["rows_per_cpu_s"] = round(opts.rows / run["cpu_seconds"])
                run["target_rows_per_s"] = round(TARGET_SHARE * workers * fast["texts_per_s"])
                run["vs_target"] = round(run["rows_per_s"] / run["target_rows_per_s"], 2)
                # the same comparison per CPU second: what the result would be on idle cores
                run["cpu_efficiency_vs_fast_path"] = round(run["rows_per_cpu_s"] / fast["texts_per_cpu_s"], 2)
                result["rounds"].append({"round": r + 1, "workers": workers, "fast_path_batch_100": fast, **run})
    result["median"] = {}
    for workers in worker_counts:
        runs = [x for x in result["rounds"] if x["workers"] == workers]
        result["median"][workers] = {k: statistics.median(x[k] for x in runs)
                                     for k in ("seconds", "rows_per_s", "target_rows_per_s", "vs_target",
                                               "cpu_efficiency_vs_fast_path", "peak_rss_mb")}
    out = bench.save_report("score", result)
    print(f"score, {opts.rows:,} rows ({result['input_mb']} MB CSV), batch {opts.batch_size}:")
    print(f"  {'round':>5} {'workers':>7} {'fast path/s':>11} {'time s':>7} {'rows/s':>8} {'target':>8} "
          f"{'vs target':>9} {'CPU s':>6} {'rows/CPU s':>10} {'vs fast/CPU':>11} {'peak RSS MB':>11}")
    for x in result["rounds"]:
        print(f"  {x['round']:>5} {x['workers']:>7} {x['fast_path_batch_100']['texts_per_s']:>11,} {x['seconds']:>7} "
              f"{x['rows_per_s']:>8,} {x['target_rows_per_s']:>8,} {x['vs_target']:>9} {x['cpu_seconds']:>6} "
              f"{x['rows_per_cpu_s']:>10,} {x['cpu_efficiency_vs_fast_path']:>11} {x['peak_rss_mb']:>11}")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
