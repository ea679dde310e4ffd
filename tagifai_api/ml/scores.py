"""Weighted F1 in plain Python: the number the retraining gate compares, computed the same way in a
training process and in a serving worker (which never imports scikit-learn)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def weighted_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """F1 of each true class, weighted by its support (scikit-learn's ``f1_score(average="weighted",
    zero_division=0)``); 0.0 for no samples."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true tags but {len(y_pred)} predicted")
    if not y_true:
        return 0.0
    support = Counter(y_true)
    predicted = Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred, strict=True) if t == p)
    total = 0.0
    for label, n in support.items():
        denominator = n + predicted[label]
        total += n * (2.0 * hits[label] / denominator if denominator else 0.0)
    return total / len(y_true)
