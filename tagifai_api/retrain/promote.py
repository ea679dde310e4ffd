"""``promote --if-better``: the shadowed candidate becomes the default only once it has scored enough
live texts and the gate still holds on the feedback it never learnt from (what was held out when it
was trained, and everything corrected since). Plain numpy: it runs in a serving worker too."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import Predictor
from tagifai_api.retrain import gate as gates
from tagifai_api.retrain import labelled
from tagifai_api.retrain.candidate import evaluate
from tagifai_api.store.database import ConflictError, Store

log = logging.getLogger(__name__)


class NothingToPromoteError(ConflictError):
    """No shadow, or one that retraining did not make (no lineage to judge it by); nothing changed."""


def promote_if_better(store: Store, root: Path, gate: gates.Gate, predictor: Callable[[str], Predictor],
                      promote: Callable[[str, str, str], object], key_name: str | None = None) -> dict:
    """Judge the shadow against the default and promote it if it passes; the decision and its numbers
    (also in the audit log: ``promoted`` or ``kept``).

    Args:
        store: the registry's pointers, the feedback, the prediction log and the audit log.
        root: the artifacts directory (the shadow's lineage is in its manifest).
        gate: the thresholds.
        predictor: the loaded model of a version.
        promote: ``promote(version, expected_default, reason)`` switches the default.

    Raises:
        NothingToPromoteError: there is no shadow, or it has no lineage.
    """
    default, shadow = store.pointers()
    if shadow is None:
        raise NothingToPromoteError("there is no shadow to promote: `retrain --shadow` sets one")
    lineage = artifacts.load(root, shadow, compiled=False).manifest.get("lineage")
    if not lineage:
        raise NothingToPromoteError(f"the shadow {shadow} was not made by retraining (its manifest has no lineage), "
                                    "so there is no held-out feedback to judge it on; switch to it with "
                                    "PUT /models/default")
    held_out = labelled.after(store, lineage["feedback"]["trained_until"])
    tested = lineage["evaluations"]["test"]
    # the test split is fixed and both versions are immutable: its numbers from training time still hold
    evaluations = evaluate(predictor(shadow), predictor(default), held_out, [], [])
    evaluations["test"] = tested
    scored, agreed = store.shadow_outcomes(shadow, default)
    rules = [gates.parent_rule(lineage["parent"], default), *gates.offline_rules(gate, evaluations),
             gates.shadow_rule(gate, scored, agreed)]
    judged = gates.verdict(rules)
    decision = "kept"
    if judged["passed"]:
        try:
            promote(shadow, default, judged["summary"])
            decision = "promoted"
        except ConflictError:  # the default changed meanwhile
            judged = gates.verdict([*rules, gates.parent_rule(lineage["parent"], store.pointers()[0])])
    if decision == "kept":
        store.record("kept", default, shadow, key_name, judged["summary"])
    log.info("%s %s: %s", decision, shadow, judged["summary"],
             extra={"event": f"candidate_{decision}", "model_version": shadow})
    return {"decision": decision, "candidate": shadow, "default": default, "evaluations": evaluations,
            "shadow": {"scored": scored, "agreed": agreed, "rate": round(agreed / scored, 4) if scored else None},
            "gate": judged}
