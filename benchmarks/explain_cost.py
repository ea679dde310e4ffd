"""In-process cost of ``explain=true``: explained predictions against plain ones, at batch 1 and 100.

Both go through :class:`~tagifai_api.ml.predict.Predictor` on raw dataset texts (cleaning included),
in one fresh process without scikit-learn, as a serving worker runs them. Cost is CPU time of the
process, not wall time: on a shared machine, wall time mostly measures the wait for a core. The two
are measured in alternating short rounds and the median of each is kept, so drift in the machine's
load falls on both alike.
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
    """CPU seconds per call of ``fn``, calling it for about ``seconds`` of CPU time."""
    calls = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        fn(batches[calls % len(batches)])
        calls += 1
    return (time.process_time() - start) / calls


def _worker(args) -> dict:
    root, seconds = args
    os.environ["OMP_NUM_THREADS"] = "1"
    from benchmarks.run import dataset_texts, load_default
    from tagifai_api.ml.predict import Predictor

    predictor = Predictor(load_default(Path(root)))
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
    lines = ["In-process, explain=true against a plain prediction (Predictor, raw texts, CPU time per call):",
             f"  {'batch':>6} {'plain µs':>10} {'explained µs':>13} {'ratio':>7}"]
    for size in SIZES:
        r = result[f"batch_{size}"]
        lines.append(f"  {size:>6} {r['plain_us']:>10,.1f} {r['explain_us']:>13,.1f} {r['ratio']:>6}x")
    return lines


def main() -> None:
    """``python -m benchmarks.explain_cost``: this measurement alone (``make bench`` runs it too)."""
    import argparse

    from tagifai_api import settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="CPU seconds per batch size, both sides")
    parser.add_argument("--artifacts", type=Path, default=Path(settings.DEFAULTS["ARTIFACTS_DIR"]))
    opts = parser.parse_args()
    print("\n".join(table(in_process(opts.artifacts, opts.seconds))))


if __name__ == "__main__":
    main()
