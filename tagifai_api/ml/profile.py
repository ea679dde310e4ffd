"""A version's reference profile: what its model answers on texts like the ones it learned from,
kept as the counts the drift statistics compare a window of live predictions with.

The profile holds the predicted-class counts, a histogram of the top-class confidence, a histogram
of text length in tokens over the reference's quintiles, and the out-of-vocabulary counts, each
observed exactly as the prediction log observes a served text (the same cleaning, the same
low-confidence rule, the same token count). numpy only: serving reads profiles, training makes them
(:func:`tagifai_api.ml.train.reference_profile`).

Which texts: every labelled project, each as a text its model had not seen. A model's answers on
its own training texts are not what it meets in service: there it is surer of itself (mean top
probability 0.94 against 0.83 here) and knows every word (1.5 % of the words out of its vocabulary
against 23 %), so a profile of them would call every new text drift. So the training texts are
answered out of fold (a model fitted on the other folds answers each fold, its vocabulary counting
the unknown words) and the test split by the version's own model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tagifai_api.ml.compiled import CompiledModel
from tagifai_api.ml.text import OTHER

FORMAT = 1
#: folds of the out-of-fold answers
FOLDS = 5
#: top-class confidence bins: 50 of width 0.02 over [0, 1]
CONFIDENCE_EDGES = tuple(round(i / 50, 2) for i in range(51))
#: length buckets: the reference's quintiles. Deciles are the textbook PSI, but with 200 to 1,000
#: texts a window's own sampling noise reaches PSI 0.1 over ten buckets (it did in 30 % of
#: 200-text windows of held-out projects) and stays under 0.05 over five
LENGTH_BUCKETS = 5


class ProfileError(ValueError):
    """A profile that does not have the shape this code reads."""


@dataclass
class Observed:
    """What the prediction log records of each text, for a batch of texts."""

    tags: list[str]
    confidence: np.ndarray
    tokens: np.ndarray
    unknown: np.ndarray

    @classmethod
    def join(cls, parts: Sequence[Observed]) -> Observed:
        return cls([t for p in parts for t in p.tags], np.concatenate([p.confidence for p in parts]),
                   np.concatenate([p.tokens for p in parts]), np.concatenate([p.unknown for p in parts]))


def observe(model: CompiledModel, threshold: float, cleaned: Sequence[str]) -> Observed:
    """Answer cleaned texts as serving does (:class:`tagifai_api.ml.predict.Predictor`: the top tag, or
    ``other`` below ``threshold``) and count their tokens as the prediction log does."""
    cleaned = list(cleaned)
    proba = model.predict_proba(cleaned)
    top = proba.argmax(axis=1)
    confidence = proba[np.arange(len(top)), top]
    tags = [OTHER if c < threshold else model.classes[j] for j, c in zip(top.tolist(), confidence.tolist(),
                                                                           strict=True)]
    stats = np.array([model.token_stats(c) for c in cleaned], dtype=np.int64).reshape(-1, 2)
    return Observed(tags, confidence, stats[:, 0], stats[:, 1])


def histogram(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the bins ``edges`` bound: ``[edges[i], edges[i+1])``, the last bin
    closed. A value outside counts in the nearest end bin: a reference's bins cover what it saw, not
    every value a window may bring, and a text longer than any it saw is still a long text. A window
    is binned with this too."""
    edges = np.asarray(edges, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right") - 1
    return np.bincount(np.clip(index, 0, len(edges) - 2), minlength=len(edges) - 1)


def length_edges(tokens: np.ndarray, buckets: int = LENGTH_BUCKETS) -> list[float]:
    """Bucket edges at the quantiles of integer token counts, halfway between whole numbers (so no
    count sits on an edge), from 0 to past the longest; equal quantiles merge."""
    inner = np.floor(np.quantile(tokens, np.linspace(0, 1, buckets + 1)[1:-1])) + 0.5
    return [float(e) for e in np.unique(np.concatenate([[0.0], inner, [float(tokens.max()) + 0.5]]))]


def build(observed: Observed, labels: Sequence[str], source: str) -> dict:
    """The profile (JSON-ready) of ``observed``; ``labels`` are the model's classes, in order."""
    names = list(labels) + sorted({t for t in observed.tags if t not in labels})
    counts = [sum(1 for t in observed.tags if t == name) for name in names]
    edges = length_edges(observed.tokens)
    return {
        "format": FORMAT,
        "source": source,
        "texts": len(observed.tags),
        "classes": {"labels": names, "counts": counts},
        "confidence": {"edges": list(CONFIDENCE_EDGES),
                       "counts": histogram(observed.confidence, CONFIDENCE_EDGES).tolist()},
        "tokens": {"edges": edges, "counts": histogram(observed.tokens, edges).tolist()},
        "oov": {"tokens": int(observed.tokens.sum()), "unknown": int(observed.unknown.sum()),
                "rate": float(observed.unknown.sum() / max(int(observed.tokens.sum()), 1))},
    }


def check(profile: object) -> dict:
    """``profile`` if it has the shape :func:`build` gives, else :class:`ProfileError` saying what is wrong."""
    def fail(why: str):
        raise ProfileError(f"not a reference profile this code reads: {why}")

    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        fail(f"format {profile.get('format') if isinstance(profile, dict) else None!r}, expected {FORMAT}")
    for part, keys in (("classes", ("labels", "counts")), ("confidence", ("edges", "counts")),
                       ("tokens", ("edges", "counts")), ("oov", ("tokens", "unknown", "rate"))):
        if not isinstance(profile.get(part), dict) or any(k not in profile[part] for k in keys):
            fail(f"{part} needs {', '.join(keys)}")
    if len(profile["classes"]["labels"]) != len(profile["classes"]["counts"]):
        fail("classes: as many counts as labels")
    for part in ("confidence", "tokens"):
        edges, counts = profile[part]["edges"], profile[part]["counts"]
        if len(edges) != len(counts) + 1 or len(counts) < 1 or list(edges) != sorted(edges):
            fail(f"{part}: increasing edges, one more than counts")
    for part in ("classes", "confidence", "tokens"):
        values = profile[part]["counts"]
        if not all(isinstance(v, int) and v >= 0 for v in values) or sum(values) < 1:
            fail(f"{part}: counts are whole numbers >= 0, at least one positive")
    return profile
