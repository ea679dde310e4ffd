"""Live accuracy of a version from the corrections of its predictions: plain arithmetic, no web."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

#: the normal quantile of a two-sided 95 % interval
_Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = _Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (sound at small ``n`` and near 0 or 1, unlike the
    normal approximation); None without observations."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def quality(outcomes: Iterable[tuple[str, str]], labels: Sequence[str]) -> dict:
    """Count, accuracy with its 95 % interval, per-class precision and recall, and the confusion
    matrix (``matrix[actual][predicted]``) of ``(predicted, actual)`` pairs."""
    pairs = list(outcomes)
    n = len(pairs)
    right = sum(p == a for p, a in pairs)
    seen = list(dict.fromkeys([*labels, *(x for pair in pairs for x in pair)]))
    matrix = {actual: {predicted: 0 for predicted in seen} for actual in seen}
    for predicted, actual in pairs:
        matrix[actual][predicted] += 1
    as_predicted, as_actual = Counter(p for p, _ in pairs), Counter(a for _, a in pairs)
    per_class = {}
    for label in seen:
        hit = matrix[label][label]
        per_class[label] = {
            "precision": round(hit / as_predicted[label], 4) if as_predicted[label] else None,
            "recall": round(hit / as_actual[label], 4) if as_actual[label] else None,
            "predicted": as_predicted[label],
            "actual": as_actual[label],
        }
    interval = wilson(right, n)
    return {
        "count": n,
        "correct": right,
        "accuracy": round(right / n, 4) if n else None,
        "accuracy_95": [round(interval[0], 4), round(interval[1], 4)] if interval else None,
        "per_class": per_class,
        "confusion": matrix,
    }
