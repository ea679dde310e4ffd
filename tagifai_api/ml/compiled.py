"""A numpy-only copy of the fitted pipeline: the same answers without scikit-learn's per-call cost.

scikit-learn spends most of a one-text call on validation and sparse-matrix set-up, and importing
it costs every worker tens of megabytes. The fitted TF-IDF vocabularies, idf weights and linear
coefficients are all a prediction needs, so they are exported once at training time and evaluated
here with a handful of vectorised numpy operations per batch.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagifai_api.ml.text import clean_text

SOFTMAX = "softmax"  # multinomial models (LogisticRegression)
OVR = "ovr"  # one-vs-rest sigmoids, renormalised (SGDClassifier with log_loss)
CHAR_WB = "char_wb"
WORD = "word"
_DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"

_WORD_CACHE_LIMIT = 20_000  # words; bounds memory under adversarial input


@dataclass
class Block:
    """One TF-IDF vectorizer of the feature union; its features sit at ``offset`` in the global space."""

    kind: str
    ngram_range: tuple[int, int]
    vocabulary: dict[str, int]
    offset: int
    sublinear_tf: bool


def _block_from(vec, offset: int) -> Block:
    if vec.norm != "l2" or not vec.use_idf or not vec.lowercase:
        raise ValueError("only lower-casing TF-IDF with idf and l2 norm can be compiled")
    if vec.preprocessor is not None or vec.strip_accents is not None or vec.stop_words is not None:
        raise ValueError("custom preprocessing or vectorizer stop words cannot be compiled")
    if vec.analyzer == WORD:
        if vec.tokenizer is not None or vec.token_pattern != _DEFAULT_TOKEN_PATTERN or vec.ngram_range != (1, 1):
            raise ValueError("word features must be unigrams with the default token pattern")
    elif vec.analyzer != CHAR_WB:
        raise ValueError(f"analyzer {vec.analyzer!r} cannot be compiled")
    return Block(kind=vec.analyzer, ngram_range=tuple(vec.ngram_range), vocabulary=dict(vec.vocabulary_),
                 offset=offset, sublinear_tf=bool(vec.sublinear_tf))


@dataclass
class CompiledModel:
    """TF-IDF blocks (``char_wb`` and/or ``word``) + a linear classifier, as plain arrays.

    Cleaned texts contain only ``[a-z0-9]`` words separated by single spaces, so scikit-learn's
    word tokens are exactly the words of two characters or more, and its ``char_wb`` n-grams are
    those of each space-padded word: both depend on one word at a time, which lets the feature
    ids of a word be computed once and cached.
    """

    blocks: list[Block]
    idf: np.ndarray  # (n_features,) over all blocks
    coef: np.ndarray  # (n_features, n_classes), feature-major so that rows gather contiguously
    intercept: np.ndarray  # (n_classes,)
    classes: tuple[str, ...]
    link: str
    stopwords: frozenset[str] = frozenset()
    _word_ids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = len(self.idf)
        self._block_of = np.zeros(n, dtype=np.int64)
        self._sublinear = np.zeros(n, dtype=bool)
        for i, b in enumerate(self.blocks):
            end = b.offset + len(b.vocabulary)
            self._block_of[b.offset:end] = i
            self._sublinear[b.offset:end] = b.sublinear_tf
        self._any_sublinear = bool(self._sublinear.any())
        self._all_sublinear = bool(self._sublinear.all())

    @classmethod
    def from_pipeline(cls, pipeline, stopwords: frozenset[str] = frozenset()) -> CompiledModel:
        """Export a fitted ``Pipeline([("tfidf", TfidfVectorizer | FeatureUnion), ("clf", linear)])``.

        ``stopwords`` are those the texts were cleaned with, kept so that serving cleans alike.
        """
        features = pipeline.named_steps["tfidf"]
        clf = pipeline.named_steps["clf"]
        if hasattr(features, "transformer_list"):
            if features.transformer_weights:
                raise ValueError("weighted feature unions cannot be compiled")
            vectorizers = [t for _, t in features.transformer_list]
        else:
            vectorizers = [features]
        blocks, idfs, offset = [], [], 0
        for vec in vectorizers:
            blocks.append(_block_from(vec, offset))
            idfs.append(np.asarray(vec.idf_, dtype=np.float64))
            offset += len(vec.vocabulary_)
        coef = np.asarray(clf.coef_, dtype=np.float64)
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
            blocks=blocks,
            idf=np.concatenate(idfs),
            coef=np.ascontiguousarray(coef.T),
            intercept=np.asarray(clf.intercept_, dtype=np.float64),
            classes=tuple(str(c) for c in clf.classes_),
            link=link,
            stopwords=frozenset(stopwords),
        )

    def save(self, path: Path) -> None:
        """Write as an ``.npz`` that loads without pickle."""
        arrays = {
            "n_blocks": np.array(len(self.blocks)),
            "idf": self.idf,
            "coef": self.coef,
            "intercept": self.intercept,
            "classes": np.array(self.classes, dtype=str),
            "link": np.array(self.link),
            "stopwords": np.array(sorted(self.stopwords), dtype=str),
        }
        for i, b in enumerate(self.blocks):
            arrays[f"b{i}_kind"] = np.array(b.kind)
            arrays[f"b{i}_terms"] = np.array(sorted(b.vocabulary, key=b.vocabulary.__getitem__), dtype=str)
            arrays[f"b{i}_ngram_range"] = np.array(b.ngram_range, dtype=np.int64)
            arrays[f"b{i}_sublinear_tf"] = np.array(b.sublinear_tf)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> CompiledModel:
        """Read what :meth:`save` wrote (``allow_pickle`` stays off)."""
        with np.load(path, allow_pickle=False) as z:
            blocks, offset = [], 0
            for i in range(int(z["n_blocks"])):
                terms = z[f"b{i}_terms"].tolist()
                blocks.append(Block(kind=str(z[f"b{i}_kind"]),
                                    ngram_range=tuple(int(n) for n in z[f"b{i}_ngram_range"]),
                                    vocabulary={t: j for j, t in enumerate(terms)},
                                    offset=offset, sublinear_tf=bool(z[f"b{i}_sublinear_tf"])))
                offset += len(terms)
            return cls(
                blocks=blocks,
                idf=z["idf"],
                coef=np.ascontiguousarray(z["coef"]),
                intercept=z["intercept"],
                classes=tuple(z["classes"].tolist()),
                link=str(z["link"]),
                stopwords=frozenset(z["stopwords"].tolist()),
            )

    def clean(self, text: str) -> str:
        """Clean a raw text as the training data was."""
        return clean_text(text, self.stopwords)

    def token_stats(self, cleaned: str) -> tuple[int, int]:
        """``(tokens, unknown)`` of a cleaned text: its words, and how many of them the model's word
        vocabulary lacks (with no word features, a word is known when any block has a feature of it).
        The prediction log counts every text with this, so it stays a split and one set look-up a word."""
        words = cleaned.split()
        known = self._known_words
        if known is not None:
            return len(words), len(words) - sum(map(known.__contains__, words))
        return len(words), sum(1 for w in words if not self._ids_of_word(w))

    @functools.cached_property
    def _known_words(self) -> frozenset[str] | None:
        vocabularies = [b.vocabulary for b in self.blocks if b.kind == WORD]
        return frozenset().union(*vocabularies) if vocabularies else None

    def _ids_of_word(self, word: str) -> list[int]:
        """Global feature ids of one word in every block, as scikit-learn's analyzers make them."""
        ids = self._word_ids.get(word)
        if ids is not None:
            return ids
        ids = []
        for block in self.blocks:
            vocab, offset = block.vocabulary, block.offset
            if block.kind == WORD:
                i = vocab.get(word) if len(word) >= 2 else None
                if i is not None:
                    ids.append(i + offset)
                continue
            w = f" {word} "
            w_len = len(w)
            min_n, max_n = block.ngram_range
            for n in range(min_n, max_n + 1):
                for start in range(max(w_len - n, 0) + 1):
                    i = vocab.get(w[start : start + n])
                    if i is not None:
                        ids.append(i + offset)
                if w_len <= n:  # the whole padded word was just counted, once; longer n-grams repeat it
                    break
        if len(self._word_ids) >= _WORD_CACHE_LIMIT:
            self._word_ids.clear()
        self._word_ids[word] = ids
        return ids

    def decision_function(self, docs: Sequence[str], counts: list | None = None) -> np.ndarray:
        """Linear scores ``(len(docs), n_classes)`` for cleaned texts.

        Args:
            counts: when a list, it gets each text's :meth:`token_stats` appended, counted from the
                feature ids this pass looks up anyway (the prediction log records them for every text;
                counting them again would cost it a second pass over the words).
        """
        # One pass of Python over the words (feature ids are cached per word), then a fixed set of
        # numpy calls for the whole batch: a batch costs little more than a single text.
        n_docs = len(docs)
        n_features = len(self.idf)
        cols: list[int] = []
        lengths: list[int] = []
        words_in: list[int] = []
        ids_of_word = self._ids_of_word
        for doc in docs:
            before = len(cols)
            words = doc.split()
            for word in words:
                cols.extend(ids_of_word(word))
            lengths.append(len(cols) - before)
            words_in.append(len(words))
        scores = np.empty((n_docs, len(self.intercept)))
        scores[:] = self.intercept
        keys = np.array(cols, dtype=np.intp)
        if counts is not None:
            counts.extend(self._counts(docs, keys, lengths, words_in))
        if not cols:
            return scores
        if n_docs > 1:
            keys += np.repeat(np.arange(n_docs, dtype=np.intp) * n_features, lengths)
        keys.sort()
        # unique keys and their counts (np.unique's work, without its per-call overhead)
        first = np.empty(len(keys), dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        first = np.flatnonzero(first)
        keys = keys[first]
        tf = np.empty(len(first), dtype=np.float64)  # each key's count: the gap to the next first
        np.subtract(first[1:], first[:-1], out=tf[:-1])
        tf[-1] = len(cols) - first[-1]
        if n_docs > 1:
            r = keys // n_features
            c = keys - r * n_features
        else:
            r = None  # one document: every row is 0
            c = keys
        if self._all_sublinear:
            np.log(tf, out=tf)
            tf += 1.0
        elif self._any_sublinear:
            tf = np.where(self._sublinear[c], np.log(tf) + 1.0, tf)
        w = tf * self.idf[c]
        # each block of each document is l2-normalised on its own, as FeatureUnion does
        n_blocks = len(self.blocks)
        if r is None:
            if n_blocks > 1:
                group = self._block_of[c]
                w /= np.sqrt(np.bincount(group, weights=w * w))[group]
            else:
                w /= np.sqrt(w @ w)
            scores[0] += w @ self.coef[c]
            return scores
        group = r * n_blocks + self._block_of[c] if n_blocks > 1 else r
        w /= np.sqrt(np.bincount(group, weights=w * w))[group]
        # keys are sorted, so each document's features are one contiguous run
        starts = np.flatnonzero(np.diff(r, prepend=-1))
        scores[r[starts]] += np.add.reduceat(self.coef[c] * w[:, None], starts, axis=0)
        return scores

    def _counts(self, docs: Sequence[str], ids: np.ndarray, lengths: list[int],
                words_in: list[int]) -> list[tuple[int, int]]:
        """Each document's ``(tokens, unknown)`` from its looked-up feature ids: with one word block a
        word is known exactly when its ids hold one of that block's (words under two characters
        have none, as :meth:`token_stats` counts them), so the known words are those ids counted."""
        span = self._word_span
        if span is None:
            return [self.token_stats(doc) for doc in docs]
        start, end = span
        in_block = ids >= start
        if end < len(self.idf):
            in_block &= ids < end
        if len(docs) == 1:  # the usual micro-batch under light load: one count, no running sums
            return [(words_in[0], words_in[0] - int(np.count_nonzero(in_block)))]
        running = np.zeros(len(ids) + 1, dtype=np.intp)  # known words up to each id, documents in a row
        np.cumsum(in_block, out=running[1:])
        ends = np.cumsum(lengths)
        known = (running[ends] - running[ends - lengths]).tolist()
        return [(n, n - k) for n, k in zip(words_in, known, strict=True)]

    @functools.cached_property
    def _word_span(self) -> tuple[int, int] | None:
        """The global feature ids ``[start, end)`` of the only word block; None unless there is exactly one."""
        word_blocks = [b for b in self.blocks if b.kind == WORD]
        if len(word_blocks) != 1:
            return None
        return word_blocks[0].offset, word_blocks[0].offset + len(word_blocks[0].vocabulary)

    def predict_proba(self, docs: Sequence[str], counts: list | None = None) -> np.ndarray:
        """Class probabilities ``(len(docs), n_classes)``, as the fitted estimator's ``predict_proba``
        (``counts``: see :meth:`decision_function`)."""
        return self.probabilities(self.decision_function(docs, counts))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities from decision values ``(n, n_classes)``, computed in place."""
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
