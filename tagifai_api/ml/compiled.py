"""A numpy-only copy of the fitted pipeline: the same answers without scikit-learn's per-call cost.

scikit-learn spends most of a one-text call on validation and sparse-matrix set-up, and importing
it costs every worker tens of megabytes. The fitted TF-IDF vocabulary, idf weights and linear
coefficients are all a prediction needs, so they are exported once at training time and evaluated
here with a handful of vectorised numpy operations per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagifai_api.ml.text import clean_text

SOFTMAX = "softmax"  # multinomial models (LogisticRegression)
OVR = "ovr"  # one-vs-rest sigmoids, renormalised (SGDClassifier with log_loss)

_WORD_CACHE_LIMIT = 200_000


@dataclass
class CompiledModel:
    """TF-IDF (``char_wb``) + linear classifier, as plain arrays."""

    vocabulary: dict[str, int]
    idf: np.ndarray  # (n_features,)
    coef: np.ndarray  # (n_features, n_classes), feature-major so that rows gather contiguously
    intercept: np.ndarray  # (n_classes,)
    classes: tuple[str, ...]
    ngram_range: tuple[int, int]
    sublinear_tf: bool
    link: str
    stopwords: frozenset[str] = frozenset()
    _word_ids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_pipeline(cls, pipeline, stopwords: frozenset[str] = frozenset()) -> CompiledModel:
        """Export a fitted ``Pipeline([("tfidf", TfidfVectorizer), ("clf", linear)])``.

        ``stopwords`` are those the texts were cleaned with, kept so that serving cleans alike.
        """
        vec = pipeline.named_steps["tfidf"]
        clf = pipeline.named_steps["clf"]
        if vec.analyzer != "char_wb" or vec.norm != "l2" or not vec.use_idf:
            raise ValueError("only char_wb TF-IDF with l2 norm and idf can be compiled")
        if vec.preprocessor is not None or vec.strip_accents is not None:
            raise ValueError("custom preprocessing cannot be compiled")
        terms = sorted(vec.vocabulary_, key=vec.vocabulary_.__getitem__)
        coef = np.asarray(clf.coef_, dtype=np.float64)
        intercept = np.asarray(clf.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:
            raise ValueError("binary models are not supported; there are at least three tags")
        if type(clf).__name__ == "SGDClassifier":
            if clf.loss != "log_loss":
                raise ValueError("SGDClassifier must use log_loss to give probabilities")
            link = OVR
        elif type(clf).__name__ == "LogisticRegression":
            link = SOFTMAX
        else:
            raise ValueError(f"cannot compile {type(clf).__name__}")
        return cls(
            vocabulary={t: i for i, t in enumerate(terms)},
            idf=np.asarray(vec.idf_, dtype=np.float64),
            coef=np.ascontiguousarray(coef.T),
            intercept=intercept,
            classes=tuple(str(c) for c in clf.classes_),
            ngram_range=tuple(vec.ngram_range),
            sublinear_tf=bool(vec.sublinear_tf),
            link=link,
            stopwords=frozenset(stopwords),
        )

    def save(self, path: Path) -> None:
        """Write as an ``.npz`` that loads without pickle."""
        terms = np.array(sorted(self.vocabulary, key=self.vocabulary.__getitem__), dtype=str)
        with open(path, "wb") as fh:
            np.savez(
                fh,
                terms=terms,
                idf=self.idf,
                coef=self.coef,
                intercept=self.intercept,
                classes=np.array(self.classes, dtype=str),
                ngram_range=np.array(self.ngram_range, dtype=np.int64),
                sublinear_tf=np.array(self.sublinear_tf),
                link=np.array(self.link),
                stopwords=np.array(sorted(self.stopwords), dtype=str),
            )

    @classmethod
    def load(cls, path: Path) -> CompiledModel:
        """Read what :meth:`save` wrote (``allow_pickle`` stays off)."""
        with np.load(path, allow_pickle=False) as z:
            terms = z["terms"].tolist()
            return cls(
                vocabulary={t: i for i, t in enumerate(terms)},
                idf=z["idf"],
                coef=np.ascontiguousarray(z["coef"]),
                intercept=z["intercept"],
                classes=tuple(z["classes"].tolist()),
                ngram_range=tuple(int(n) for n in z["ngram_range"]),
                sublinear_tf=bool(z["sublinear_tf"]),
                link=str(z["link"]),
                stopwords=frozenset(z["stopwords"].tolist()),
            )

    def clean(self, text: str) -> str:
        """Clean a raw text as the training data was."""
        return clean_text(text, self.stopwords)

    def _ids_of_word(self, word: str) -> list[int]:
        """Feature ids of one word's padded n-grams, as scikit-learn's ``char_wb`` analyzer makes them."""
        ids = self._word_ids.get(word)
        if ids is not None:
            return ids
        vocab = self.vocabulary
        w = f" {word} "
        w_len = len(w)
        min_n, max_n = self.ngram_range
        ids = []
        for n in range(min_n, max_n + 1):
            for offset in range(max(w_len - n, 0) + 1):
                i = vocab.get(w[offset : offset + n])
                if i is not None:
                    ids.append(i)
            if w_len <= n:  # the whole padded word was just counted, once; longer n-grams repeat it
                break
        if len(self._word_ids) >= _WORD_CACHE_LIMIT:
            self._word_ids.clear()
        self._word_ids[word] = ids
        return ids

    def decision_function(self, docs: Sequence[str]) -> np.ndarray:
        """Linear scores ``(len(docs), n_classes)`` for cleaned texts."""
        n_docs = len(docs)
        n_features = len(self.idf)
        rows: list[int] = []
        cols: list[int] = []
        ids_of_word = self._ids_of_word
        for r, doc in enumerate(docs):
            start = len(cols)
            for word in doc.split():
                cols.extend(ids_of_word(word))
            rows.extend([r] * (len(cols) - start))
        scores = np.tile(self.intercept, (n_docs, 1))
        if not cols:
            return scores
        keys = np.array(rows, dtype=np.int64) * n_features + np.array(cols, dtype=np.int64)
        keys, counts = np.unique(keys, return_counts=True)
        r = keys // n_features
        c = keys - r * n_features
        tf = counts.astype(np.float64)
        if self.sublinear_tf:
            tf = np.log(tf) + 1.0
        w = tf * self.idf[c]
        norms = np.sqrt(np.bincount(r, weights=w * w, minlength=n_docs))
        w /= norms[r]
        # rows come out of np.unique sorted, so each document is one contiguous run
        present, starts = np.unique(r, return_index=True)
        scores[present] += np.add.reduceat(self.coef[c] * w[:, None], starts, axis=0)
        return scores

    def predict_proba(self, docs: Sequence[str]) -> np.ndarray:
        """Class probabilities ``(len(docs), n_classes)``, as the fitted estimator's ``predict_proba``."""
        scores = self.decision_function(docs)
        if self.link == SOFTMAX:
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
        else:
            np.negative(scores, out=scores)
            np.exp(scores, out=scores)
            scores += 1.0
            np.reciprocal(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores
