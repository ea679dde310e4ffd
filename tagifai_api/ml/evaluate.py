"""Metrics in the shape ``/performance`` serves: overall, per class and per slice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from tagifai_api.ml import data


def _rounded(value: float) -> float:
    return round(float(value), 6)


def overall_metrics(y_true: Sequence[str], y_pred: Sequence[str]) -> dict:
    """Weighted precision, recall and F1 over all samples."""
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {"precision": _rounded(p), "recall": _rounded(r), "f1": _rounded(f), "num_samples": len(y_true)}


def class_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Precision, recall, F1 and support for each label."""
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(labels), average=None, zero_division=0
    )
    return {
        label: {"precision": _rounded(p[i]), "recall": _rounded(r[i]), "f1": _rounded(f[i]), "num_samples": int(s[i])}
        for i, label in enumerate(labels)
    }


def slice_metrics(y_true: Sequence[str], y_pred: Sequence[str], mask: np.ndarray) -> dict:
    """Micro-averaged metrics on the rows ``mask`` selects (zeros when it selects none)."""
    y_true = np.asarray(y_true)[mask]
    y_pred = np.asarray(y_pred)[mask]
    if len(y_true) == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "num_samples": 0}
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    return {"precision": _rounded(p), "recall": _rounded(r), "f1": _rounded(f), "num_samples": int(len(y_true))}


def evaluate(
    clean_texts: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict:
    """The full performance report for predictions on a held-out set.

    Args:
        clean_texts: the cleaned inputs (slices are defined on them).
        y_true: true tags.
        y_pred: predicted tags, after the low-confidence rule.
        labels: every tag the model knows, in order.

    Returns:
        ``{"overall": {...}, "class": {tag: {...}}, "slices": {name: {...}}}``.
    """
    return {
        "overall": overall_metrics(y_true, y_pred),
        "class": class_metrics(y_true, y_pred, labels),
        "slices": {
            "short_text": slice_metrics(y_true, y_pred, data.short_text(clean_texts)),
            "nlp_cnn": slice_metrics(y_true, y_pred, data.nlp_cnn(clean_texts, y_true)),
        },
    }
