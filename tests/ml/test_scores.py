"""The gate's weighted F1, computed without scikit-learn, is scikit-learn's."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import f1_score

from tagifai_api.ml.scores import weighted_f1

TAGS = ["computer-vision", "mlops", "natural-language-processing", "other"]


@pytest.mark.parametrize("seed", range(20))
def test_weighted_f1_is_scikit_learns(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    y_true = [rng.choice(TAGS[: rng.randint(1, 4)]) for _ in range(n)]
    y_pred = [t if rng.random() < 0.6 else rng.choice(TAGS) for t in y_true]
    expected = f1_score(y_true, y_pred, average="weighted", zero_division=0)
    assert weighted_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_no_samples_and_mismatched_lengths():
    assert weighted_f1([], []) == 0.0
    with pytest.raises(ValueError, match="2 true tags but 1 predicted"):
        weighted_f1(["a", "b"], ["a"])
