"""Live accuracy, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from tagifai_api.feedback.quality import quality, wilson

LABELS = ["computer-vision", "mlops", "natural-language-processing", "other"]


def test_wilson_matches_the_formula_worked_by_hand():
    # 8 right of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71676, half-width
    # 1.96 * sqrt(0.016 + 0.0096040) / 1.38416 = 0.22659
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) is None
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    low, high = wilson(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(2 * 0.0960, abs=1e-3)


def test_quality_counts_accuracy_precision_recall_and_the_confusion_matrix():
    # predicted -> actual: 3 cv right, 1 cv that was mlops, 2 mlops right, 1 nlp that was other
    pairs = ([("computer-vision", "computer-vision")] * 3 + [("computer-vision", "mlops")]
             + [("mlops", "mlops")] * 2 + [("natural-language-processing", "other")])
    q = quality(pairs, LABELS)
    assert q["count"] == 7 and q["correct"] == 5 and q["accuracy"] == round(5 / 7, 4)
    low, high = wilson(5, 7)
    assert q["accuracy_95"] == [round(low, 4), round(high, 4)]
    cv, ml, nlp, other = (q["per_class"][k] for k in LABELS)
    assert cv == {"precision": 0.75, "recall": 1.0, "predicted": 4, "actual": 3}
    assert ml == {"precision": 1.0, "recall": round(2 / 3, 4), "predicted": 2, "actual": 3}
    assert nlp == {"precision": 0.0, "recall": None, "predicted": 1, "actual": 0}
    assert other == {"precision": None, "recall": 0.0, "predicted": 0, "actual": 1}
    assert q["confusion"]["mlops"] == {"computer-vision": 1, "mlops": 2, "natural-language-processing": 0, "other": 0}
    assert q["confusion"]["other"]["natural-language-processing"] == 1
    assert sum(sum(row.values()) for row in q["confusion"].values()) == 7


def test_no_feedback_is_no_accuracy_not_zero():
    q = quality([], LABELS)
    assert q["count"] == 0 and q["accuracy"] is None and q["accuracy_95"] is None
    assert all(c["precision"] is None and c["recall"] is None for c in q["per_class"].values())
    assert not math.isnan(q["correct"])
