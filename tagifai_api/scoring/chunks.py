"""Scoring one chunk: checking each record, predicting in batches, formatting output and error lines.

This runs in the worker processes (or in the main one with ``--workers 1``, or in Spark's Python
workers: :mod:`tagifai_api.scoring.spark`). It uses the service's own
:class:`~tagifai_api.ml.predict.Predictor` and the API's rules for a text (title + description
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
from tagifai_api.scoring.formats import CSV, PARQUET, Chunk

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


#: an error record: ``(line, row, id, reason)``; ``line`` is ``None`` where the input has no lines
Rejection = tuple[int | None, int | None, object, str]


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
    #: Arrow type of the id column in Arrow output (Parquet, Spark): see :func:`id_arrow_type`
    id_type: str = "string"


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


def _check_id(ident: object, name: str | None) -> None:
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int, float))):
        raise _Rejected(f"id column {name!r} is not a string or a number")


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
        if self.config.input_format == PARQUET:  # typed values: checked as JSON's are
            values: tuple = payload  # type: ignore[assignment]
            texts = [_check_string(values[i], name) for i, name in zip(cols.text, cols.names, strict=True)]
            ident = values[cols.id] if cols.id is not None else None
            _check_id(ident, cols.id_name)
            return ident, texts
        try:
            obj = orjson.loads(payload)  # type: ignore[arg-type]
        except orjson.JSONDecodeError as exc:
            raise _Rejected(f"not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _Rejected(f"not a JSON object but {type(obj).__name__}")
        texts = [_check_string(obj.get(k), k) for k in cols.text]
        ident = obj.get(cols.id, None) if cols.id is not None else None
        if cols.id is not None:
            _check_id(ident, cols.id_name)
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

    def check(self, items, rows) -> tuple[list[object], list[str], list[Rejection]]:
        """Split records into the scorable ones, ``(ids, texts)``, and the rejected ones.

        Args:
            items: ``(line, payload, error)`` per record, as in a :class:`~tagifai_api.scoring.formats.Chunk`.
            rows: each record's row number (``None`` where it is not known and not needed: an id
                column is given and the caller reports no rejection).

        Texts are cleaned, or as sent when explaining (the explainer cleans them itself).
        """
        ids: list[object] = []
        texts: list[str] = []
        errors: list[Rejection] = []
        prepare = (lambda t: t) if self.config.explain else self.predictor.clean
        for (line, payload, error), row in zip(items, rows, strict=True):
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
            errors.append((line, row, ident, error))
        return ids, texts, errors

    def predictions(self, texts: list[str]) -> list[dict]:
        """``/predict``'s answers for checked texts, ``batch_size`` at a time."""
        predict = self._explained if self.config.explain else self.predictor.predict_clean
        out: list[dict] = []
        size = self.config.batch_size
        for start in range(0, len(texts), size):
            out.extend(predict(texts[start:start + size]))
        return out

    def score(self, chunk: Chunk) -> ChunkResult:
        """Score every record of ``chunk``; bad records go to the error lines, never stop it."""
        rows = range(chunk.first_row, chunk.first_row + len(chunk.items))
        ids, texts, errors = self.check(chunk.items, rows)
        if self.config.output_format == PARQUET:
            data = arrow_ipc(self.arrow_rows(ids, texts))
        else:
            data = self.format_rows(ids, self.predictions(texts))
            if self.config.gzip_output:
                data = gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
        return ChunkResult(index=chunk.index, rows=len(chunk.items), data=data, errors=error_lines(errors),
                           scored=len(ids), rejected=len(errors), position=chunk.position)

    # --- Arrow output: Parquet, and Spark ------------------------------------------------------

    def arrow_schema(self, nested: bool = False):
        """The output's Arrow schema (see :func:`output_schema`)."""
        return output_schema(self.classes, self.config.id_type, bool(self.config.explain), nested)

    def arrow_rows(self, ids: list[object], texts: list[str], nested: bool = False):
        """Output rows as one Arrow record batch (see :meth:`arrow_schema`)."""
        import pyarrow as pa

        schema = self.arrow_schema(nested)
        id_type = schema.field("id").type
        if pa.types.is_string(id_type):
            ids = text_ids(ids)
        explain = self.config.explain
        if explain:
            predictions = self.predictions(texts)
            tags = [p["predicted_tag"] for p in predictions]
            confidence = [p["confidence"] for p in predictions]
            probs = [[p["probabilities"][c] for p in predictions] for c in self.classes]
            low = [p["low_confidence"] for p in predictions]
        else:
            tags, confidence, proba, low = self.predictor.predict_clean_columns(texts, self.config.batch_size)
            probs = list(proba.T)
        prob_arrays = [pa.array(column, type=pa.float64()) for column in probs]
        if nested:
            prob_arrays = [pa.StructArray.from_arrays(prob_arrays, names=list(self.classes))]
        arrays = [pa.array(ids, type=id_type), pa.array(tags, type=pa.string()),
                  pa.array(confidence, type=pa.float64()), *prob_arrays, pa.array(low, type=pa.bool_()),
                  pa.array([self.predictor.version] * len(ids), type=pa.string())]
        if explain:
            arrays += [pa.array([p["explained_tag"] for p in predictions], type=pa.string()),
                       pa.array([" ".join(f"{w}:{c:.4f}" for w, c in p["top_words"]) for p in predictions],
                                type=pa.string())]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

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


def text_ids(ids: list[object]) -> list[str | None]:
    """Ids for a text id column: a JSON number as its JSON text."""
    return [i if i is None or isinstance(i, str) else orjson.dumps(i).decode() for i in ids]


def output_schema(classes: tuple[str, ...], id_type: str, explain: bool = False, nested: bool = False):
    """The Arrow schema of output rows: the CSV header's columns, or with ``nested`` the JSON Lines
    shape (``probabilities`` one struct of the tags)."""
    import pyarrow as pa

    double = pa.float64()
    probs = ([pa.field("probabilities", pa.struct([pa.field(c, double) for c in classes]))] if nested
             else [pa.field(f"probability_{c}", double) for c in classes])
    fields = [pa.field("id", pa.type_for_alias(id_type)), pa.field("predicted_tag", pa.string()),
              pa.field("confidence", double), *probs, pa.field("low_confidence", pa.bool_()),
              pa.field("model_version", pa.string())]
    if explain:
        fields += [pa.field("explained_tag", pa.string()), pa.field("top_words", pa.string())]
    return pa.schema(fields)


def error_lines(errors: list[Rejection]) -> bytes:
    """The errors file's JSON lines for rejected records."""
    return b"".join(orjson.dumps({"line": line, "row": row, "id": _json_safe(ident), "reason": reason}) + b"\n"
                    for line, row, ident, reason in errors)


def arrow_ipc(batch) -> bytes:
    """A record batch as Arrow IPC stream bytes: how a worker hands Parquet rows to the writer."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def id_arrow_type(input_format: str, id_column: str | None, parquet_type: object = None) -> str:
    """The id column's Arrow type in Arrow output: the row number is an integer; a Parquet id
    column keeps a numeric type; any other id is text (a JSON number as its JSON text)."""
    if id_column is None:
        return "int64"
    if input_format == PARQUET and parquet_type is not None:
        import pyarrow as pa

        if pa.types.is_integer(parquet_type):
            return "int64"
        if pa.types.is_floating(parquet_type):
            return "double"
    return "string"


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
