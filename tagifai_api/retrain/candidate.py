"""One retraining: a candidate fitted on the dataset plus the feedback (the default's arguments), both
it and the default evaluated on the held-out feedback and the fixed test split, registered with its
lineage, then promoted, shadowed or kept by the gate. Runs in a process of its own (it imports
pandas and scikit-learn, which serving workers never do)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ModelVersion
from tagifai_api.ml.predict import Predictor
from tagifai_api.ml.scores import weighted_f1
from tagifai_api.retrain import gate as gates
from tagifai_api.retrain import labelled
from tagifai_api.store.database import ConflictError
from tagifai_api.store.registry import Registry

log = logging.getLogger(__name__)

#: ``progress(stage, fraction)``; it raises to stop the run (its lease was lost)
Progress = Callable[[str, float], None]


def _f1(predictor: Predictor, texts: Sequence[str], tags: Sequence[str]) -> float:
    predicted = [p["predicted_tag"] for p in predictor.predict(list(texts))] if texts else []
    return round(weighted_f1(list(tags), predicted), 6)


def evaluate(candidate: Predictor, default: Predictor, held_out: list[dict], test_texts: Sequence[str],
             test_tags: Sequence[str]) -> dict:
    """Both versions' weighted F1 on the held-out feedback and on the test split."""
    texts, tags = [r["text"] for r in held_out], [r["tag"] for r in held_out]
    return {
        "held_out": {"texts": len(held_out), "candidate": _f1(candidate, texts, tags),
                     "default": _f1(default, texts, tags)},
        "test": {"texts": len(test_texts), "candidate": _f1(candidate, test_texts, test_tags),
                 "default": _f1(default, test_texts, test_tags)},
    }


def _trained_reason(lineage: dict) -> str:
    data, fb, ev = lineage["dataset"], lineage["feedback"], lineage["evaluations"]
    return (f"fitted on {data['fitted']} dataset projects ({data['replaced']} relabelled by feedback) and "
            f"{fb['used'] - fb['in_test']} feedback texts; {fb['held_out']} held out, {fb['duplicates']} duplicates "
            f"dropped; held-out F1 {ev['held_out']['candidate']:.4f} vs {ev['held_out']['default']:.4f} on "
            f"{ev['held_out']['texts']}, test F1 {ev['test']['candidate']:.4f} vs {ev['test']['default']:.4f} "
            f"on {ev['test']['texts']}")


def retrain(registry: Registry, data_path: Path, gate: gates.Gate, holdout: float, *, shadow: bool = False,
            key_name: str | None = None, job_id: str | None = None,
            progress: Progress = lambda stage, fraction: None) -> dict:
    """Train, judge and decide; the decision and its numbers (also in the audit log).

    Args:
        registry: the default comes from it, the candidate goes into it.
        data_path: the labelled dataset (CSV) the feedback is added to.
        gate: the thresholds.
        holdout: the share of the feedback held out.
        shadow: a candidate that passes becomes the shadow, not the default.
        key_name, job_id: who asked, and the job, for the record.
        progress: told of each stage.

    Returns:
        ``{"decision": "promoted"|"shadowed"|"kept", "candidate", "parent", "gate", "lineage"}``.
    """
    import pandas as pd

    from tagifai_api.ml import data
    from tagifai_api.ml import train as training

    store = registry.store
    parent = registry.default_version()
    default = artifacts.load(registry.root, parent)
    args = {k: v for k, v in default.args.items() if k != "threshold"}  # chosen again on the new data

    progress("reading feedback", 0.05)
    feedback = labelled.collect(store, holdout)
    dataset_sha = artifacts.sha256_file(data_path)
    df = data.load_dataset(data_path)

    progress("training", 0.2)
    extra = pd.DataFrame({"text": [r["text"] for r in feedback.used], "tag": [r["tag"] for r in feedback.used]})
    result = training.train(df, args, extra=extra, withhold={r["key"] for r in feedback.held_out})

    progress("evaluating", 0.6)
    test = training.splits(df, args)[2]
    candidate = Predictor(ModelVersion(version="candidate", path=Path(), manifest={}, args=result.args,
                                       performance=result.performance, labels=result.labels,
                                       compiled=result.compiled))
    evaluations = evaluate(candidate, Predictor(default), feedback.held_out, list(test["text"]), list(test["tag"]))
    judged = gates.verdict(gates.offline_rules(gate, evaluations))
    rows = result.rows
    lineage = {
        "parent": parent,
        "job": job_id,
        "dataset": {"file": Path(data_path).name, "sha256": dataset_sha, "fitted": rows["dataset_fitted"],
                    "replaced": rows["dataset_replaced"], "duplicates": rows["dataset_duplicates"],
                    "withheld": rows["dataset_withheld"], "test": rows["test"]},
        "feedback": {**feedback.lineage(), "in_test": rows["extra_in_test"]},
        "evaluations": evaluations,
        "gate": {"passed": judged["passed"], "failed": judged["failed"], "rules": judged["rules"]},
    }

    progress("registering", 0.8)
    version = registry.save_version(result, dataset_sha, make_default=False, lineage=lineage).version
    store.record("trained", parent, version, key_name, _trained_reason(lineage))
    log.info("trained %s from %s: %s", version, parent, judged["summary"],
             extra={"event": "retrained", "model_version": version})

    progress("deciding", 0.9)
    decision, reason = "kept", judged["summary"]
    if judged["passed"] and shadow:
        registry.set_shadow(version, key_name=key_name, reason=reason, action="shadowed")
        decision = "shadowed"
    elif judged["passed"]:
        try:
            registry.promote(version, expect=parent, key_name=key_name, reason=reason)
            decision = "promoted"
        except ConflictError:  # the default changed while this one trained
            judged = gates.verdict([*judged["rules"], gates.parent_rule(parent, registry.pointers()[0])])
            reason = judged["summary"]
    if decision == "kept":
        store.record("kept", parent, version, key_name, reason)
    log.info("%s %s: %s", decision, version, reason, extra={"event": f"candidate_{decision}", "model_version": version})
    return {"decision": decision, "candidate": version, "parent": parent, "gate": judged, "lineage": lineage}
