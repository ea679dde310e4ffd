"""Turning texts into tags with a loaded model version."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tagifai_api.ml.artifacts import ModelVersion
from tagifai_api.ml.explain import Explainer
from tagifai_api.ml.text import OTHER


class Prediction(dict):
    """One text's answer, as a dict (it goes into the response as it is), which also carries the
    text's word counts for the prediction log: they are not part of the answer, so they are not keys."""

    __slots__ = ("tokens", "unknown_tokens")


class Predictor:
    """Tags texts with one model version, applying its low-confidence rule.

    Args:
        model: a loaded version with its compiled model.
    """

    def __init__(self, model: ModelVersion) -> None:
        if model.compiled is None:
            raise ValueError("the model version was loaded without its compiled model")
        self.version = model.version
        self.threshold = float(model.args.get("threshold", 0.0))
        self._model = model.compiled
        self._classes = model.compiled.classes
        self._explainer = Explainer(model.compiled)

    @property
    def classes(self) -> tuple[str, ...]:
        """The tags, in the order of the probability columns."""
        return self._classes

    def clean(self, text: str) -> str:
        """The text as the model sees it."""
        return self._model.clean(text)

    def token_stats(self, cleaned: str) -> tuple[int, int]:
        """``(tokens, unknown)`` of a cleaned text (see :meth:`CompiledModel.token_stats`)."""
        return self._model.token_stats(cleaned)

    def predict_clean(self, cleaned: Sequence[str]) -> list[dict]:
        """Predictions for already-cleaned texts.

        Returns:
            One dict per text: ``predicted_tag``, ``confidence`` (the top probability),
            ``probabilities`` (tag → probability) and ``low_confidence`` (the top tag fell
            below the threshold and ``other`` was returned instead).
        """
        if not cleaned:
            return []
        counts: list[tuple[int, int]] = []
        return self._results(self._model.predict_proba(cleaned, counts), counts)

    def decide(self, proba: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The low-confidence rule over probabilities ``(n, n_classes)``: ``(tags, confidence, low)``,
        where ``confidence`` is each row's top probability and ``low`` marks the rows answered ``other``
        because it fell below the threshold. Dicts (``/predict``) and columns (batch scoring) both come
        from here, so they cannot disagree."""
        top = proba.argmax(axis=1)
        confidence = proba[np.arange(len(top)), top]
        low = confidence < self.threshold
        classes = self._classes
        tags = [OTHER if is_low else classes[j] for j, is_low in zip(top.tolist(), low.tolist(), strict=True)]
        return tags, confidence, low

    def _results(self, proba: np.ndarray, counts: list[tuple[int, int]]) -> list[Prediction]:
        tags, confidence, low = self.decide(proba)
        classes = self._classes
        out = []
        for row, tag, conf, is_low, (tokens, unknown) in zip(proba.tolist(), tags, confidence.tolist(), low.tolist(),
                                                             counts, strict=True):
            p = Prediction(predicted_tag=tag, confidence=conf, probabilities=dict(zip(classes, row, strict=True)),
                           low_confidence=is_low)
            p.tokens = tokens
            p.unknown_tokens = unknown
            out.append(p)
        return out

    def predict_clean_columns(self, cleaned: Sequence[str], batch_size: int = 100) -> tuple[list[str], np.ndarray,
                                                                                            np.ndarray, np.ndarray]:
        """:meth:`predict_clean` as columns, for batch scoring: ``(tags, confidence, probabilities, low)``
        with ``probabilities`` of shape ``(len(cleaned), n_classes)`` in :attr:`classes` order.

        The model is called ``batch_size`` texts at a time, as the service's batches call it.
        """
        if not cleaned:
            empty = np.empty(0)
            return [], empty, np.empty((0, len(self._classes))), empty.astype(bool)
        proba = np.vstack([self._model.predict_proba(cleaned[i:i + batch_size])
                           for i in range(0, len(cleaned), batch_size)])
        tags, confidence, low = self.decide(proba)
        return tags, confidence, proba, low

    def predict(self, texts: Sequence[str]) -> list[dict]:
        """Predictions for raw texts, in order."""
        return self.predict_clean([self.clean(t) for t in texts])

    def explain(self, texts: Sequence[str]) -> list[dict]:
        """Predictions for raw texts, each with the exact explanation of its top class's score.

        The probabilities come from the explainer's own scores, so a prediction and its
        explanation can never disagree. The explained class is the top-probability one, also when
        the low-confidence rule answered ``other`` (the explanation's ``note`` then says so).
        See :mod:`tagifai_api.ml.explain`.
        """
        if not texts:
            return []
        scored = [self._explainer.score(t) for t in texts]
        proba = self._model.probabilities(np.vstack([s.scores for s in scored]))
        out = self._results(proba, [self._model.token_stats(self.clean(t)) for t in texts])
        for result, s, top in zip(out, scored, proba.argmax(axis=1).tolist(), strict=True):
            explanation = self._explainer.explain_scored(s, top)
            if result["low_confidence"]:
                explanation["note"] = (
                    f"The top probability, {result['confidence']:.2f} for {self._classes[top]}, is below the "
                    f"threshold {self.threshold:g}, so the answer is {OTHER}; this explains {self._classes[top]}."
                )
            result["explanation"] = explanation
        return out
