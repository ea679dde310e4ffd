"""How well the drift statistics tell shifted traffic from in-distribution traffic:
`python -m benchmarks.drift_detection`.

A version is trained from ``config/args.json`` (with its reference profile, as ``train`` writes it);
each kind of traffic (``tests.helpers.drift_traffic``) is answered as ``/predict`` answers it and
observed as the prediction log records it, and a window of it is compared with the profile:

- the detection table: one window of each shift, every statistic's value and status;
- the false-alarm rate: many windows of in-distribution traffic (the version's test split, never
  trained on, drawn with replacement; and every project of the dataset, training ones included),
  at 200, 500 and 1,000 texts, and how many of them any statistic calls ``warn`` or ``drift``.

The JSON report goes to ``reports/drift/detection.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagifai_api import settings  # noqa: E402
from tagifai_api.ml import data  # noqa: E402
from tagifai_api.ml import train as training  # noqa: E402
from tagifai_api.ml.profile import Observed, observe  # noqa: E402
from tagifai_api.monitoring.service import compare  # noqa: E402
from tests import helpers  # noqa: E402

SHIFTS = ("one_class:computer-vision", "one_class:natural-language-processing", "one_class:mlops", "one_class:other",
          "cooking", "sports", "german", "french", "short", "long", "mixed:german:0.3", "mixed:cooking:0.3")


def _window(observed: Observed, index: np.ndarray) -> dict:
    return {"tags": [observed.tags[i] for i in index], "confidence": observed.confidence[index],
            "tokens": observed.tokens[index], "unknown": observed.unknown[index]}


def _observed(result, texts: list[str]) -> Observed:
    compiled = result.compiled
    return observe(compiled, result.args["threshold"], [compiled.clean(t) for t in texts])


def detection(result, projects, size: int) -> list[dict]:
    rows = []
    for kind in ("in_distribution", *SHIFTS):
        texts = helpers.drift_traffic(kind, size, 0, projects)
        report = compare(result.profile, _window(_observed(result, texts), np.arange(size)))
        rows.append({"traffic": kind, "statistics": {k: {"value": v["value"], "status": v["status"]}
                                                      for k, v in report.items()}})
    return rows


def false_alarms(result, pools: dict, sizes: tuple[int, ...], windows: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for name, texts in pools.items():
        observed = _observed(result, texts)
        for size in sizes:
            flagged = {k: 0 for k in settings.DRIFT_THRESHOLDS}
            any_flag = any_drift = 0
            worst: dict[str, float] = {}
            for _ in range(windows):
                report = compare(result.profile, _window(observed, rng.integers(0, len(texts), size)))
                hit = False
                for statistic, entry in report.items():
                    if entry["status"] != "ok":
                        flagged[statistic] += 1
                        hit = True
                    value = entry["value"]
                    if value is not None:
                        lower = entry["worse"] == "lower"
                        before = worst.get(statistic)
                        worst[statistic] = value if before is None else (min if lower else max)(before, value)
                any_flag += hit
                any_drift += any(entry["status"] == "drift" for entry in report.values())
            out.append({"pool": name, "unique_texts": len(texts), "window": size, "windows": windows,
                        "any_flagged": any_flag, "rate": any_flag / windows, "drift": any_drift,
                        "by_statistic": flagged,
                        "worst": worst})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=1000, help="In-distribution windows per pool and size.")
    parser.add_argument("--size", type=int, default=1000, help="Texts in a window of the detection table.")
    options = parser.parse_args()

    t0 = time.perf_counter()
    args = json.loads(settings.ARGS_FILE.read_text())
    dataset = data.load_dataset(settings.DATA_FILE)
    result = training.train(dataset, args)
    projects = helpers.held_out(args)
    everything = data.prepare(dataset, args["accepted_tags"], args["min_tag_freq"], training.stopwords_for(args))
    table = detection(result, projects, options.size)
    rates = false_alarms(result, {"test split": list(projects["text"]), "whole dataset": list(everything["text"])},
                         (200, 500, 1000), options.windows)

    names = list(settings.DRIFT_THRESHOLDS)
    print(f"Detection, windows of {options.size} texts (value, status):\n")
    print("| traffic | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in table:
        cells = []
        for name in names:
            entry = row["statistics"][name]
            value = "n/a" if entry["value"] is None else f"{entry['value']:.3g}"
            cells.append(value if entry["status"] == "ok" else f"**{value} {entry['status']}**")
        print(f"| {row['traffic']} | " + " | ".join(cells) + " |")
    print(f"\nFalse alarms: in-distribution windows any statistic flags ({options.windows} windows each):\n")
    print("| pool | window | flagged (warn or drift) | of which drift | rate | by statistic "
          "| most extreme value seen |")
    print("|---|---:|---:|---:|---:|---|---|")
    for r in rates:
        by = ", ".join(f"{k} {v}" for k, v in r["by_statistic"].items() if v) or "none"
        worst = ", ".join(f"{k} {v:.3g}" for k, v in r["worst"].items())
        print(f"| {r['pool']} ({r['unique_texts']} texts) | {r['window']} | {r['any_flagged']} | {r['drift']} | "
              f"{r['rate']:.2%} | "
              f"{by} | {worst} |")
    out = ROOT / "reports" / "drift"
    out.mkdir(parents=True, exist_ok=True)
    (out / "detection.json").write_text(json.dumps({"detection": table, "false_alarms": rates}, indent=2) + "\n")
    print(f"\n{time.perf_counter() - t0:.1f} s; report in {out / 'detection.json'}")


if __name__ == "__main__":
    main()
