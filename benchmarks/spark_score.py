"""`make bench-spark`: ``score --engine spark`` (``local[2]``) against the local scorer (2 workers).

Inputs, made in a temporary directory by repeating the dataset's records: the 1,000,000-row CSV of
`make bench-score`, and a 10,000,000-row Parquet file (no dictionary encoding, so its size is that of
as many distinct texts; row groups of 1,000,000). Each is scored by both engines, one right after the
other so that they share the machine's load, with ``--id-column id`` (what a data-lake table has;
Spark then needs no numbering pass). A run of each engine on the 764-row dataset gives its fixed
cost. Every run is a fresh ``python -m tagifai_api score`` process: wall time, rows/s, and the CPU
seconds of its whole process tree (the JVM and Spark's Python workers included), the figure that
depends least on the neighbours of a shared machine.

From the fixed costs and the large runs' marginal rates, the input size at which Spark on this one
machine would stop losing: ``(fixed_spark - fixed_local) / (1/rate_local - 1/rate_spark)`` when
Spark's marginal rate is the higher, else none. Results: a table on stdout and
``reports/bench/spark-score-<time>.json``.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import run as bench  # noqa: E402
from benchmarks.score import make_input  # noqa: E402
from tagifai_api import settings  # noqa: E402

ROW_GROUP = 1_000_000


def make_parquet(path: Path, rows: int) -> None:
    """``rows`` records of the dataset (id, title, description), repeated, ids unique."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(settings.DATA_FILE, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    titles = [r["title"] for r in records]
    descriptions = [r["description"] for r in records]
    n = len(records)
    schema = pa.schema([("id", pa.int64()), ("title", pa.string()), ("description", pa.string())])
    with pq.ParquetWriter(path, schema, use_dictionary=False, compression="snappy") as writer:
        for start in range(0, rows, ROW_GROUP):
            count = min(ROW_GROUP, rows - start)
            idx = [(start + i) % n for i in range(count)]
            writer.write_table(pa.table({"id": pa.array(range(start + 1, start + count + 1), pa.int64()),
                                         "title": [titles[i] for i in idx],
                                         "description": [descriptions[i] for i in idx]}, schema=schema))


class TreeSampler(threading.Thread):
    """CPU seconds and peak summed RSS of a process and all its descendants, sampled every 0.2 s.

    The JVM that PySpark starts is never waited for, so ``getrusage`` would miss it and the Python
    workers it forks: each process's own user + system time is kept from its last sample instead
    (a process ending between two samples loses at most 0.2 s).
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.cpu: dict[int, float] = {}
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.2):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                continue
            rss = 0
            for proc in procs:
                try:
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = max(self.cpu.get(proc.pid, 0.0), times.user + times.system)
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)


def run_score(root: Path, src: Path, out: Path, engine: str, version: str) -> dict:
    """One ``score`` run in a fresh process: wall seconds, CPU seconds and peak RSS of its process tree."""
    cmd = [sys.executable, "-m", "tagifai_api", "--artifacts", str(root), "score", str(src), "--output", str(out),
           "--id-column", "id", "--version", version, "--quiet", "--force"]
    cmd += ["--engine", "spark", "--master", "local[2]"] if engine == "spark" else ["--workers", "2"]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join(2)
    if proc.returncode != 0:
        raise RuntimeError(f"score exited with {proc.returncode}: {stderr.strip()}")
    return {"engine": engine, "seconds": round(seconds, 1), "cpu_seconds": round(sum(sampler.cpu.values()), 1),
            "peak_rss_mb": round(sampler.peak / 2**20), "load_before": round(load, 1),
            "load_after": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--parquet-rows", type=int, default=10_000_000)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the inputs and outputs go (about 3 GB at the defaults)")
    parser.add_argument("--artifacts", type=Path, default=Path(settings.DEFAULTS["ARTIFACTS_DIR"]))
    opts = parser.parse_args()
    version = bench.default_version(opts.artifacts)
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "model_version": version, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="tagifai-bench-spark-", dir=opts.tmp))
    try:
        small = settings.DATA_FILE
        big_csv = work / "projects.csv"
        big_parquet = work / "projects.parquet"
        print(f"writing {opts.csv_rows:,} CSV rows and {opts.parquet_rows:,} Parquet rows ...", file=sys.stderr)
        make_input(big_csv, opts.csv_rows)
        make_parquet(big_parquet, opts.parquet_rows)
        result["inputs"] = {"csv_mb": round(big_csv.stat().st_size / 2**20, 1),
                            "parquet_mb": round(big_parquet.stat().st_size / 2**20, 1)}
        plan = [("fixed cost", small, 764, "csv"), (f"{opts.csv_rows:,} rows CSV", big_csv, opts.csv_rows, "csv"),
                (f"{opts.parquet_rows:,} rows Parquet", big_parquet, opts.parquet_rows, "parquet")]
        for name, src, rows, ext in plan:
            for engine in ("local", "spark"):
                print(f"{name}: {engine} ...", file=sys.stderr)
                out = work / f"out-{engine}.{ext}"
                run = run_score(opts.artifacts, src, out, engine, version)
                run.update(input=name, rows=rows, rows_per_s=round(rows / run["seconds"]),
                           rows_per_cpu_s=round(rows / run["cpu_seconds"]))
                result["runs"].append(run)
                print(f"  {run}", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs = {(r["input"], r["engine"]): r for r in result["runs"]}
    fixed = {e: runs[("fixed cost", e)]["seconds"] for e in ("local", "spark")}
    big = plan[2][0]
    marginal = {e: (runs[(big, e)]["rows"] - 764) / max(runs[(big, e)]["seconds"] - fixed[e], 1e-9)
                for e in ("local", "spark")}
    crossover = None
    if marginal["spark"] > marginal["local"]:
        crossover = round((fixed["spark"] - fixed["local"]) / (1 / marginal["local"] - 1 / marginal["spark"]))
    result["fixed_seconds"] = fixed
    result["marginal_rows_per_s"] = {e: round(v) for e, v in marginal.items()}
    result["crossover_rows"] = crossover
    path = bench.save_report("spark-score", result)
    print(f"inputs: {result['inputs']['csv_mb']} MB CSV, {result['inputs']['parquet_mb']} MB Parquet")
    print(f"  {'input':<24} {'engine':<6} {'time s':>7} {'rows/s':>9} {'CPU s':>7} {'rows/CPU s':>10} "
          f"{'peak RSS MB':>11} {'load':>9}")
    for r in result["runs"]:
        print(f"  {r['input']:<24} {r['engine']:<6} {r['seconds']:>7} {r['rows_per_s']:>9,} {r['cpu_seconds']:>7} "
              f"{r['rows_per_cpu_s']:>10,} {r['peak_rss_mb']:>11} {r['load_before']:>4}/{r['load_after']:<4}")
    print(f"fixed cost: local {fixed['local']} s, spark {fixed['spark']} s; marginal rows/s at {big}: "
          f"local {marginal['local']:,.0f}, spark {marginal['spark']:,.0f}")
    print("crossover: " + (f"about {crossover:,} rows" if crossover else "none: Spark's marginal rate is the lower"))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
