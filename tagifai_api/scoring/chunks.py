"""Scoring one chunk: checking each record, predicting in batches, formatting output and error lines.

This runs in the worker processes (or in the main one with ``--workers 1``). It uses the service's
own :class:`~tagifai_api.ml.predict.Predictor` and the API's rules for a text (title + description
joined as in training, not blank, at most ``MAX_TEXT_LENGTH`` characters), so a row gets the same
answer here as from ``/predict``.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import orjson

from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import Predictor
from tagifai_api.ml.text import join_text
from tagifai_api.scoring.formats import CSV, Chunk

GZIP_LEVEL = 6


@dataclass(frozen=True)
class Columns:
    """Where a record's text and id are: positions in the fields the reader kept of a CSV row
    (see :meth:`~tagifai_api.scoring.formats.Reader.keep`), or JSON keys.

    ``text`` is one column (``--text-column``) or two (title, description), joined as in training.
    ``header_positions`` are those fields' places in the CSV header (empty for JSON Lines).
    """

    text: tuple
    id: object | None
    names: tuple[str, ...]
    id_name: str | None = None
    header_positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScorerConfig:
    """Everything a worker needs, picklable: it loads the model itself, once."""

    artifacts_dir: str
    version: str
    input_format: str
    output_format: str
    gzip_output: bool
    columns: Columns
    max_text_length: int
    batch_size: int
    explain: int = 0  # top words per row (0: no explanation)


@dataclass
class ChunkResult:
    """A chunk's output bytes (one gzip member when compressing), its error lines and counts."""

    index: int
    rows: int
    data: bytes
    errors: bytes
    scored: int
    rejected: int
    position: int | None


class _Rejected(Exception):
    """A record that is not scored; the message is the reason written to the errors file."""

    ident: object = None


def _check_string(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _Rejected(f"column {name!r} is not a string")


def _valid_utf8(value: str, what: str) -> str:
    # CSV input is decoded with surrogateescape, so one bad row does not stop the file
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Rejected(f"{what} is not valid UTF-8") from None
    return value


class ChunkScorer:
    """Scores chunks with one loaded model version.

    Args:
        config: the job's settings.
        predictor: an already loaded predictor (else it is loaded from ``config``).
    """

    def __init__(self, config: ScorerConfig, predictor: Predictor | None = None) -> None:
        if predictor is None:
            predictor = Predictor(artifacts.load(Path(config.artifacts_dir), config.version))
        self.config = config
        self.predictor = predictor
        self.classes = predictor.classes

    # --- reading a record ---------------------------------------------------------------------

    def _fields(self, payload: object) -> tuple[object, list[str | None]]:
        """The id and the text columns of one record's payload."""
        cols = self.config.columns
        if self.config.input_format == CSV:
            fields: tuple[str, ...] = payload  # type: ignore[assignment]
            texts = [fields[i] for i in cols.text]
            ident = fields[cols.id] if cols.id is not None else None
            return ident, texts
        try:
            obj = orjson.loads(payload)  # type: ignore[arg-type]
        except orjson.JSONDecodeError as exc:
            raise _Rejected(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _Rejected(f"not a JSON object but {type(obj).__name__}")
        texts = [_check_string(obj.get(k), k) for k in cols.text]
        ident = obj.get(cols.id, None) if cols.id is not None else None
        if cols.id is not None and ident is not None and (isinstance(ident, bool)
                                                          or not isinstance(ident, (str, int, float))):
            raise _Rejected(f"id column {cols.id_name!r} is not a string or a number")
        return ident, texts

    def _record(self, row: int, payload: object) -> tuple[object, str]:
        """The id and the text of a record, or :class:`_Rejected` with the reason (and the id,
        when it could be read)."""
        ident, texts = self._fields(payload)
        cols = self.config.columns
        if cols.id is None:
            ident = row
        elif ident is None or ident == "":
            raise _Rejected(f"missing id (column {cols.id_name!r})")
        elif isinstance(ident, str):
            ident = _valid_utf8(ident, "the id")
        try:
            if all(t is None for t in texts):
                raise _Rejected(f"missing text (column {' and '.join(map(repr, cols.names))})")
            text = texts[0] if len(texts) == 1 else join_text(texts[0], texts[1])
            if not text.strip():
                raise _Rejected("blank text")
            if len(text) > self.config.max_text_length:
                raise _Rejected(f"text longer than {self.config.max_text_length} characters ({len(text)})")
            return ident, _valid_utf8(text, "the text")
        except _Rejected as exc:
            exc.ident = ident
            raise

    # --- scoring ------------------------------------------------------------------------------

    def score(self, chunk: Chunk) -> ChunkResult:
        """Score every record of ``chunk``; bad records go to the error lines, never stop it."""
        ids: list[object] = []
        texts: list[str] = []  # cleaned, or as sent when explaining (the explainer cleans them itself)
        errors: list[bytes] = []
        prepare = (lambda t: t) if self.config.explain else self.predictor.clean
        for offset, (line, payload, error) in enumerate(chunk.items):
            row = chunk.first_row + offset
            ident = None
            if error is None:
                try:
                    ident, text = self._record(row, payload)
                except _Rejected as exc:
                    error, ident = str(exc), exc.ident
                else:
                    ids.append(ident)
                    texts.append(prepare(text))
                    continue
            errors.append(orjson.dumps({"line": line, "row": row, "id": _json_safe(ident), "reason": error}) + b"\n")
        predict = self._explained if self.config.explain else self.predictor.predict_clean
        predictions: list[dict] = []
        size = self.config.batch_size
        for start in range(0, len(texts), size):
            predictions.extend(predict(texts[start:start + size]))
        data = self.format_rows(ids, predictions)
        if self.config.gzip_output:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        return ChunkResult(index=chunk.index, rows=len(chunk.items), data=data, errors=b"".join(errors),
                           scored=len(ids), rejected=len(errors), position=chunk.position)

    def _explained(self, texts: list[str]) -> list[dict]:
        """Predictions as ``/predict`` with ``explain: true`` makes them, with the explanation cut
        down to the explained tag and its top words (a whole explanation per row is too large)."""
        out = self.predictor.explain(texts)
        for p in out:
            explanation = p.pop("explanation")
            p["explained_tag"] = explanation["tag"]
            p["top_words"] = top_words(explanation["words"], self.config.explain)
        return out

    def format_rows(self, ids: list[object], predictions: list[dict]) -> bytes:
        """Output rows, in the output's format."""
        version = self.predictor.version
        explain = bool(self.config.explain)
        if self.config.output_format == CSV:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            classes = self.classes
            rows = []
            for ident, p in zip(ids, predictions):
                probs = p["probabilities"]
                row = [ident, p["predicted_tag"], p["confidence"], *[probs[c] for c in classes],
                       "true" if p["low_confidence"] else "false", version]
                if explain:  # words are runs of letters and digits: no spaces or colons inside
                    row += [p["explained_tag"], " ".join(f"{w}:{c:.4f}" for w, c in p["top_words"])]
                rows.append(row)
            writer.writerows(rows)
            return buf.getvalue().encode("utf-8")
        out = []
        for ident, p in zip(ids, predictions):
            if explain:
                p["top_words"] = [{"word": w, "contribution": c} for w, c in p["top_words"]]
            out.append(orjson.dumps({"id": ident, **p, "model_version": version}))
            out.append(b"\n")
        return b"".join(out)

    def header(self) -> bytes:
        """The CSV header line (JSON Lines has none), compressed alike."""
        if self.config.output_format != CSV:
            return b""
        names = ["id", "predicted_tag", "confidence", *[f"probability_{c}" for c in self.classes],
                 "low_confidence", "model_version"]
        if self.config.explain:
            names += ["explained_tag", "top_words"]
        data = (",".join(names) + "\n").encode("utf-8")
        return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0) if self.config.gzip_output else data


def top_words(words: list[dict], k: int) -> list[tuple[str, float]]:
    """The ``k`` words that pushed the explained tag's score up the most, largest first.

    ``words`` is an explanation's per-word list (:mod:`tagifai_api.ml.explain`); the same word
    met several times (case aside) counts once, with its contributions added up, and is shown as
    first written. Dropped pieces (stop words, links, symbols) and words pulling the other way are
    left out.
    """
    totals: dict[str, list] = {}
    for w in words:
        if w["dropped"]:
            continue
        entry = totals.setdefault(w["text"].lower(), [w["text"], 0.0])
        entry[1] += w["contribution"]
    ranked = sorted((e for e in totals.values() if e[1] > 0), key=lambda e: -e[1])
    return [(text, value) for text, value in ranked[:k]]


def _json_safe(ident: object) -> object:
    if isinstance(ident, str):
        try:
            ident.encode("utf-8")
        except UnicodeEncodeError:
            return ident.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return ident


# --- worker processes -------------------------------------------------------------------------

_scorer: ChunkScorer | None = None  # one per worker process, made by its initializer


def init_worker(config: ScorerConfig) -> None:
    """Pool initializer: load the model once; leave Ctrl-C to the main process, which stops
    cleanly; die with the main process, even when it is killed with SIGKILL."""
    global _scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    tune_malloc()
    _scorer = ChunkScorer(config)


def tune_malloc() -> None:
    """Keep a batch's arrays on the heap between batches (glibc only; explicit MALLOC_* env wins).

    The same tuning as ``gunicorn.conf.py``'s (which must not import this package): glibc serves
    the model's larger per-batch arrays with fresh mmaps and trims the heap after each batch, and
    the page faults cost about 15% of a scoring process's time at batch 100, measured with
    ``/usr/bin/time`` (system time 0.95 s -> 0.05 s for 200,000 rows).
    """
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc


def score_in_worker(chunk: Chunk) -> ChunkResult:
    """Pool task: score a chunk with this worker's model."""
    assert _scorer is not None, "init_worker was not run"
    return _scorer.score(chunk)


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: an orphaned worker ends when its task pipe closes
