"""Exact per-word explanations of the linear model's score, laid over the text as it was sent.

A class's score is its intercept plus one term per TF-IDF feature present in the cleaned text
(``x_f * coef[f, class]``), so it can be split exactly, with no sampling or approximation:

- every feature comes from one or more words of the cleaned text: a ``word`` feature from the
  word itself, a ``char_wb`` n-gram from the space-padded word it was cut from. A feature that
  several words produce (``" le"`` from both "learning" and "less") is shared among them by
  occurrence count: a word that produced it twice of its five occurrences gets two fifths of its
  contribution;
- every cleaned word comes from a run of characters of the original text (lower-casing keeps
  positions, except for the one character whose lower case is two, U+0130), so its contribution
  lands on that run.

The original text is split into pieces that cover every character but whitespace: links, runs of
word characters (letters, digits, underscores, any script), and runs of anything else
(punctuation, symbols, emoji). A piece gets the contributions of the cleaned words inside it; one
the cleaning dropped entirely (a link, a stop word, punctuation, a word with no ASCII letter or
digit) is listed with contribution 0 and ``dropped`` true, so a client can lay the explanation over
the text exactly as sent. Offsets count Unicode code points, as Python's ``str`` does.

Then, for every text, ``intercept + sum(piece contributions) == score`` up to float rounding, and
``score`` is the scikit-learn pipeline's ``decision_function`` for that class.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from itertools import chain

import numpy as np

from tagifai_api.ml.compiled import CompiledModel
from tagifai_api.ml.text import LINK, clean_text

#: why the cleaning dropped a piece
LINK_DROPPED = "link"
STOP_WORD = "stop_word"
SYMBOLS = "symbols"  # punctuation, symbols, emoji: nothing alphanumeric
NOT_ASCII = "not_ascii"  # letters or digits, but none the cleaning keeps (another script)

_PIECES = re.compile(r"(\w+)|[^\w\s]+")  # group 1: a run of word characters
_ALNUM_RUN = re.compile(r"[a-z0-9]+")
_WORD, _SYMBOLS, _LINK = 1, 0, 2  # piece kinds


class AlignmentError(Exception):
    """The words found in the original text are not those the cleaning produced (a bug, never input)."""


@dataclass
class Alignment:
    """The original text's pieces and the cleaned words, each with the piece it came from.

    Piece ``i`` is ``text[starts[i]:ends[i]]``; ``found[i]`` counts the cleaned words inside it,
    stop words included, and ``kept[i]`` those the model saw.
    """

    starts: list[int]
    ends: list[int]
    kinds: list[int]
    found: list[int]
    kept: list[int]
    words: list[str]  # the cleaned text's words, in order (``" ".join(words)`` is the cleaned text)
    piece_of_word: list[int]


def _lower_with_origin(text: str) -> tuple[str, list[int] | None]:
    """``text.lower()`` and, when lengths differ, the original index of each lower-case character.

    Only U+0130 lower-cases to two characters; every other character keeps its position, and the
    map is then ``None`` (the identity).
    """
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered, None
    origin: list[int] = []
    for i, ch in enumerate(text):
        origin.extend([i] * len(ch.lower()))
    if len(origin) != len(lowered):
        raise AlignmentError("lower-casing changed the text's length in an unexpected way")
    return lowered, origin


def _pieces(text: str, start: int, end: int, out: tuple[list[int], list[int], list[int]]) -> None:
    starts, ends, kinds = out
    for m in _PIECES.finditer(text, start, end):
        s, e = m.span()
        starts.append(s)
        ends.append(e)
        kinds.append(_WORD if m.lastindex else _SYMBOLS)


def align(text: str, stopwords: frozenset[str] = frozenset()) -> Alignment:
    """Split ``text`` into pieces and find where each word of its cleaned form came from.

    Mirrors :func:`tagifai_api.ml.text.clean_text` step by step: links are found in the lower-cased
    text, everything else that is not ``[a-z0-9]`` separates words, and stop words are left out.

    Raises:
        AlignmentError: the words found differ from what the cleaning gives (never for any input
            the tests have thrown at it; a guard so that a change to the cleaning cannot make
            explanations silently wrong).
    """
    lowered, origin = _lower_with_origin(text)
    links = [m.span() for m in LINK.finditer(lowered)]
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    pieces = (starts, ends, kinds)
    searched = lowered
    if links:
        parts, prev, prev_orig = [], 0, 0
        for s, e in links:
            # a link's characters separate words, as the cleaning's replacement by a space does
            parts += [lowered[prev:s], " " * (e - s)]
            prev = e
            s, e = (s, e) if origin is None else (origin[s], origin[e - 1] + 1)
            _pieces(text, prev_orig, s, pieces)
            starts.append(s)
            ends.append(e)
            kinds.append(_LINK)
            prev_orig = e
        parts.append(lowered[prev:])
        searched = "".join(parts)
        _pieces(text, prev_orig, len(text), pieces)
    else:
        _pieces(text, 0, len(text), pieces)

    found = [0] * len(starts)
    kept = [0] * len(starts)
    words: list[str] = []
    piece_of_word: list[int] = []
    for m in _ALNUM_RUN.finditer(searched):
        s, e = m.span()
        if origin is not None:
            s, e = origin[s], origin[e - 1] + 1
        k = bisect.bisect_right(starts, s) - 1
        if ends[k] < e:  # a word across two pieces; Python's case tables never make one, but merge if so
            while ends[k] < e:
                ends[k] = ends.pop(k + 1)
                for column in (starts, kinds, found, kept):
                    column.pop(k + 1)
            kinds[k] = _WORD
        found[k] += 1
        word = m.group()
        if word in stopwords:
            continue
        kept[k] += 1
        words.append(word)
        piece_of_word.append(k)
    if " ".join(words) != clean_text(text, stopwords):
        raise AlignmentError("the words found in the text differ from the cleaned text's")
    return Alignment(starts, ends, kinds, found, kept, words, piece_of_word)


def _dropped_reason(kind: int, found: int, piece: str) -> str:
    if kind == _LINK:
        return LINK_DROPPED
    if found:
        return STOP_WORD
    return NOT_ASCII if any(ch.isalnum() for ch in piece) else SYMBOLS


@dataclass
class Scored:
    """One text's features and class scores, ready to be explained for any class."""

    text: str
    alignment: Alignment
    scores: np.ndarray  # (n_classes,): the decision function
    feats: np.ndarray  # global feature ids present, ascending
    counts: np.ndarray  # occurrences of each
    weights: np.ndarray  # their normalised TF-IDF values
    owner: np.ndarray  # for each occurrence, in feature order: the cleaned word it came from
    group: np.ndarray  # and the position of its feature in ``feats``


class Explainer:
    """Explains a :class:`CompiledModel`'s scores, one text at a time.

    The features, weights and coefficients are the compiled model's own, so an explained score is
    the served score.

    Args:
        model: the compiled model.
        top_k: how many features ``top`` lists on each side.
    """

    def __init__(self, model: CompiledModel, top_k: int = 5) -> None:
        self.model = model
        self.top_k = top_k
        self._terms: list[list[str]] | None = None

    def score(self, text: str) -> Scored:
        """Clean and featurise one raw text, remembering where each feature came from."""
        model = self.model
        al = align(text, model.stopwords)
        id_lists = [model._ids_of_word(w) for w in al.words]
        lengths = [len(ids) for ids in id_lists]
        n = sum(lengths)
        if not n:  # nothing the model knows: the scores are the intercepts
            empty = np.empty(0, dtype=np.intp)
            return Scored(text, al, model.intercept.copy(), empty, empty, np.empty(0), empty, empty)
        n_words = len(lengths)
        # one sort of (feature, word) keys groups the occurrences by feature and keeps their word
        keys = np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=n) * n_words
        keys += np.repeat(np.arange(n_words, dtype=np.int64), lengths)
        keys.sort()
        cols, owner = np.divmod(keys, n_words)
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(cols[1:], cols[:-1], out=first[1:])
        group = np.cumsum(first) - 1
        first = np.flatnonzero(first)
        feats = cols[first]
        counts = np.diff(first, append=n)
        tf = counts.astype(np.float64)
        sub = model._sublinear[feats]
        tf[sub] = np.log(tf[sub]) + 1.0
        w = tf * model.idf[feats]
        block = model._block_of[feats]
        w /= np.sqrt(np.bincount(block, weights=w * w))[block]  # each block l2-normalised on its own
        return Scored(text, al, model.intercept + w @ model.coef[feats], feats, counts, w, owner, group)

    def explain_scored(self, scored: Scored, tag_index: int) -> dict:
        """The explanation of ``scored``'s score for class ``tag_index`` (see :meth:`explain`)."""
        model = self.model
        al = scored.alignment
        text = scored.text
        contrib = scored.weights * model.coef[scored.feats, tag_index]
        if len(contrib):
            per_word = np.bincount(scored.owner, weights=(contrib / scored.counts)[scored.group],
                                   minlength=len(al.words))
            per_piece = np.bincount(al.piece_of_word, weights=per_word, minlength=len(al.starts)).tolist()
        else:
            per_piece = [0.0] * len(al.starts)
        words = []
        for s, e, kind, found, kept, value in zip(al.starts, al.ends, al.kinds, al.found, al.kept, per_piece):
            if kept:
                words.append({"text": text[s:e], "start": s, "end": e, "contribution": value, "dropped": False})
            else:
                words.append({"text": text[s:e], "start": s, "end": e, "contribution": 0.0, "dropped": True,
                              "reason": _dropped_reason(kind, found, text[s:e])})
        intercept = float(model.intercept[tag_index])
        return {
            "tag": model.classes[tag_index],
            "score": intercept + float(contrib.sum()),
            "intercept": intercept,
            "words": words,
            "top": self._top(scored, contrib),
        }

    def explain(self, text: str, tag_index: int | None = None) -> dict:
        """The exact explanation of one raw text's score for one class.

        Args:
            text: the text as sent.
            tag_index: the class to explain (a column of ``model.classes``); by default the one
                with the highest score, which is the top-probability class.

        Returns:
            ``tag``, ``score`` (its decision value), ``intercept``, ``words`` (one entry per piece
            of ``text``, in order: ``text``, ``start``, ``end``, ``contribution``, ``dropped`` and,
            when dropped, ``reason``) and ``top`` (``positive`` and ``negative``: up to ``top_k``
            features each, largest first, with ``feature``, ``kind``, ``count`` and
            ``contribution``).
        """
        scored = self.score(text)
        if tag_index is None:
            tag_index = int(np.argmax(scored.scores))
        return self.explain_scored(scored, tag_index)

    def _top(self, scored: Scored, contrib: np.ndarray) -> dict:
        k = self.top_k
        order = np.argsort(contrib)
        # only the few features listed are turned into Python objects
        chosen = np.concatenate([order[::-1][:k], order[:k]])
        values = contrib[chosen].tolist()
        feats = scored.feats[chosen].tolist()
        counts = scored.counts[chosen].tolist()
        n = min(k, len(order))

        def entry(j: int) -> dict:
            kind, feature = self._feature(feats[j])
            return {"feature": feature, "kind": kind, "count": counts[j], "contribution": values[j]}

        return {"positive": [entry(j) for j in range(n) if values[j] > 0],
                "negative": [entry(j) for j in range(n, 2 * n) if values[j] < 0]}

    def _feature(self, i: int) -> tuple[str, str]:
        """(kind, text) of global feature ``i``."""
        if self._terms is None:  # built on first use; two threads building it at once is harmless
            self._terms = [sorted(b.vocabulary, key=b.vocabulary.__getitem__) for b in self.model.blocks]
        b = int(self.model._block_of[i])
        block = self.model.blocks[b]
        return block.kind, self._terms[b][i - block.offset]
