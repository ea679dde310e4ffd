"""In-process cost of ``explain=true``: explained predictions against plain ones, at batch 1 and 100.

Both go through :class:`~tagifai_api.ml.predict.Predictor` on raw dataset texts (cleaning included),
in one fresh process without scikit-learn, as a serving worker runs them. The two are measured in
alternating short rounds and the median of each is kept, so drift in the machine's load falls on
both alike.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import statistics
import time
from pathlib import Path

SIZES = (1, 100)
ROUNDS = 5


def _seconds_per_call(fn, batches: list[list[str]], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batches[calls % len(batches)])
        calls += 1
    return (time.perf_counter() - start) / calls


def _worker(args) -> dict:
    root, seconds = args
    os.environ["OMP_NUM_THREADS"] = "1"
    from benchmarks.run import dataset_texts
    from tagifai_api.ml import artifacts
    from tagifai_api.ml.predict import Predictor

    predictor = Predictor(artifacts.load(Path(root)))
    texts = dataset_texts()
    out = {}
    for size in SIZES:
        rng = random.Random(size)
        batches = [rng.sample(texts, size) for _ in range(max(1, 2000 // size))]
        for b in batches[:3]:
            predictor.predict(b)
            predictor.explain(b)
        plain, explained = [], []
        for _ in range(ROUNDS):
            plain.append(_seconds_per_call(predictor.predict, batches, seconds / ROUNDS))
            explained.append(_seconds_per_call(predictor.explain, batches, seconds / ROUNDS))
        p, e = statistics.median(plain), statistics.median(explained)
        out[f"batch_{size}"] = {"plain_us": round(p * 1e6, 1), "explain_us": round(e * 1e6, 1),
                                "ratio": round(e / p, 2)}
    return out


def in_process(root: Path, seconds: float) -> dict:
    """``{"batch_1": {"plain_us", "explain_us", "ratio"}, "batch_100": {...}}``, per call."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_worker, ((str(root), seconds),))


def table(result: dict) -> list[str]:
    lines = ["In-process, explain=true against a plain prediction (Predictor, raw texts, per call):",
             f"  {'batch':>6} {'plain µs':>10} {'explained µs':>13} {'ratio':>7}"]
    for size in SIZES:
        r = result[f"batch_{size}"]
        lines.append(f"  {size:>6} {r['plain_us']:>10,.1f} {r['explain_us']:>13,.1f} {r['ratio']:>6}x")
    return lines
