"""Does the service learn from use? `python -m benchmarks.learning_curve`.

The dataset is ordered by its time column and cut in three: the oldest half is what the first model
is trained on (its dataset, the *floor*); the newest share (``--eval``, 20 %) is the evaluation set,
never sent as traffic or feedback; what lies between is replayed, oldest first, as traffic through
the real app (``/predict`` with the prediction log keeping texts), and for a share of it
(``--feedback-share``, chosen at random with ``--seed``) a user sends the right tag (``/feedback``
on that request id). After every ``--every`` feedback items (and once more at the end, if any came
since) the service retrains exactly as ``python -m tagifai_api retrain`` does: dataset plus feedback,
the newest feedback held out, the gate deciding whether the candidate becomes the default.

Each step reports the weighted F1 on the evaluation set of the candidate just trained and of the
default after the gate's decision, beside the first model (floor) and a model trained on every
project before the evaluation set with its true tag (the *ceiling*: as if every project had come
with feedback). A table goes to standard output; with ``--plot`` a PNG (matplotlib) and a JSON
report to ``reports/bench/``.

Two settings differ from the service's, for the shipped dataset's size (764 projects):

- the first model keeps every accepted tag (``--min-tag-freq 1``, not 30): its half of the data has
  only 14 mlops projects, so with 30 mlops would become ``other``, and since feedback may only name
  a tag the model has, no user could ever teach it mlops, the tag that grows fastest after it;
- ``--min-held-out`` is 20, not 50: the replay brings about 180 corrections, of which 20 % are held
  out, so the service's default would keep every candidate and the served line would stay at the
  floor (the table shows the candidate either way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagifai_api import settings  # noqa: E402
from tagifai_api.ml.text import join_text  # noqa: E402


def _ordered(path: Path, time_column: str):
    import pandas as pd

    from tagifai_api.ml import data

    df = data.load_dataset(path)
    when = pd.to_datetime(df[time_column])
    return df.assign(_when=when).sort_values("_when", kind="stable").drop(columns="_when").reset_index(drop=True)


def _f1(version_dir: Path, version: str, texts: list[str], tags: list[str]) -> float:
    from tagifai_api.ml import artifacts
    from tagifai_api.ml.predict import Predictor
    from tagifai_api.ml.scores import weighted_f1

    predictor = Predictor(artifacts.load(version_dir, version))
    return round(weighted_f1(tags, [p["predicted_tag"] for p in predictor.predict(texts)]), 4)


def run(args) -> dict:
    from tagifai_api import create_app
    from tagifai_api.ml import artifacts
    from tagifai_api.ml import train as training
    from tagifai_api.retrain.candidate import retrain
    from tagifai_api.retrain.gate import Gate
    from tagifai_api.store.database import Store
    from tagifai_api.store.registry import Registry

    train_args = json.loads(settings.ARGS_FILE.read_text())
    accepted = set(train_args["accepted_tags"])
    df = _ordered(args.data, args.time_column)
    n = len(df)
    n_eval = max(1, round(n * args.eval))
    first, traffic, held = df.iloc[: n // 2], df.iloc[n // 2: n - n_eval], df.iloc[n - n_eval:]

    def texts_tags(frame):
        return ([join_text(t, d) for t, d in zip(frame["title"], frame["description"], strict=True)],
                [tag if tag in accepted else "other" for tag in frame["tag"]])

    eval_texts, eval_tags = texts_tags(held)
    work = Path(tempfile.mkdtemp(prefix="tagifai-learning-"))
    base = work / "first-half.csv"
    first.to_csv(base, index=False)
    url = f"sqlite:///{work / 'state.db'}"
    store = Store(url)
    store.upgrade()
    registry = Registry(store, work / "artifacts")
    first_args = {**train_args, "min_tag_freq": args.min_tag_freq}
    floor_version = registry.save_version(training.train(first, first_args), artifacts.sha256_file(base)).version
    ceiling = training.train(df.iloc[: n - n_eval], train_args)
    ceiling_version = artifacts.save(work / "ceiling", ceiling, "").version
    floor = _f1(work / "artifacts", floor_version, eval_texts, eval_tags)
    top = _f1(work / "ceiling", ceiling_version, eval_texts, eval_tags)

    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    app = create_app({"ARTIFACTS_DIR": str(work / "artifacts"), "DATABASE_URL": url, "PREDICTION_LOG": "texts",
                      "REGISTRY_POLL_S": 0, "AUTH": "off", "LOG_LEVEL": "WARNING", "METRICS": False,
                      "API_KEYS_FILE": str(work / "no-keys.json")})
    client = app.test_client()
    service = app.extensions["tagifai"].service
    gate = Gate(margin=args.margin, tolerance=args.tolerance, min_held_out=args.min_held_out)
    rng = random.Random(args.seed)
    steps = [{"step": 0, "feedback": 0, "candidate": None, "served": floor, "decision": "first model", "failed": [],
              "version": floor_version}]
    sent = since = 0
    traffic_texts, traffic_tags = texts_tags(traffic)

    def step() -> None:
        result = retrain(registry, base, gate, args.holdout)
        service.refresh()
        served = registry.default_version()
        steps.append({"step": len(steps), "feedback": sent, "decision": result["decision"],
                      "failed": result["gate"]["failed"], "version": result["candidate"],
                      "candidate": _f1(work / "artifacts", result["candidate"], eval_texts, eval_tags),
                      "served": _f1(work / "artifacts", served, eval_texts, eval_tags)})
        row = steps[-1]
        print(f"step {row['step']}: {sent} feedback, candidate {row['candidate']:.4f}, served {row['served']:.4f} "
              f"({row['decision']}{': ' + ', '.join(row['failed']) if row['failed'] else ''})", file=sys.stderr)

    t0 = time.perf_counter()
    for i, (text, tag) in enumerate(zip(traffic_texts, traffic_tags, strict=True)):
        rid = f"replay-{i}"
        answered = client.post("/predict", json={"texts": [{"text": text}]}, headers={"X-Request-ID": rid})
        assert answered.status_code == 200, answered.get_json()
        if rng.random() >= args.feedback_share:
            continue
        service.prediction_log.flush()
        recorded = client.post("/feedback", json={"feedback": [{"request_id": rid, "tag": tag}]})
        assert recorded.status_code == 200, recorded.get_json()
        sent += 1
        since += 1
        if since == args.every:
            step()
            since = 0
    if since:
        step()
    app.extensions["tagifai"].close()
    app.extensions["tagifai_auth"].ring.close()
    store.close()
    return {"data": str(args.data), "projects": n, "first_model_projects": len(first), "traffic": len(traffic),
            "evaluation_projects": len(held), "evaluation_from": str(held[args.time_column].iloc[0]),
            "feedback_share": args.feedback_share, "every": args.every, "holdout": args.holdout, "seed": args.seed,
            "min_tag_freq": args.min_tag_freq,
            "gate": gate.__dict__, "floor": floor, "ceiling": top, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1)}


def table(report: dict) -> str:
    lines = ["| step | feedback items | candidate F1 | served F1 | decision |", "|---:|---:|---:|---:|---|"]
    for s in report["steps"]:
        candidate = f"{s['candidate']:.3f}" if s["candidate"] is not None else ""
        decision = s["decision"] + (f" ({', '.join(s['failed'])})" if s["failed"] else "")
        lines.append(f"| {s['step']} | {s['feedback']} | {candidate} | {s['served']:.3f} | {decision} |")
    lines.append(f"| | floor (first model) | | {report['floor']:.3f} | |")
    lines.append(f"| | ceiling (all {report['first_model_projects'] + report['traffic']} projects, true tags) | | "
                 f"{report['ceiling']:.3f} | |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.axhline(report["ceiling"], color="tab:green", linestyle="--", label="ceiling: every project, true tag")
    ax.axhline(report["floor"], color="tab:gray", linestyle="--", label="floor: the first model")
    ax.step([s["feedback"] for s in steps], [s["served"] for s in steps], where="post", color="tab:blue",
            label="served default (after the gate)")
    trained = [s for s in steps if s["candidate"] is not None]
    ax.plot([s["feedback"] for s in trained], [s["candidate"] for s in trained], "o", color="tab:orange",
            label="retrained candidate")
    ax.set_xlabel("feedback items received")
    ax.set_ylabel(f"weighted F1, newest {report['evaluation_projects']} projects")
    ax.set_title("Learning from feedback")
    ax.legend(loc="center left", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=settings.DATA_FILE, help="Labelled projects CSV.")
    parser.add_argument("--time-column", default="created_on")
    parser.add_argument("--eval", type=float, default=0.2, help="Newest share of the data kept for evaluation.")
    parser.add_argument("--feedback-share", type=float, default=0.8, help="Share of the traffic users correct.")
    parser.add_argument("--every", type=int, default=100, help="Retrain after this many feedback items.")
    parser.add_argument("--holdout", type=float, default=0.2, help="Share of the feedback retraining holds out.")
    parser.add_argument("--margin", type=float, default=0.01)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--min-held-out", type=int, default=20)
    parser.add_argument("--min-tag-freq", type=int, default=1, help="The first model's min_tag_freq.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="Write the curve as a PNG here.")
    return parser.parse_args(argv)


def main() -> None:
    args = arguments()
    report = run(args)
    print(table(report))
    out = ROOT / "reports" / "bench" / f"learning-curve-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"report: {out}", file=sys.stderr)
    if args.plot:
        plot(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
