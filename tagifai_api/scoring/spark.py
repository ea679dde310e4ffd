"""Scoring on Apache Spark with the ``score`` command's own code, for data that lives in a data lake.

Two ways in, both over :class:`~tagifai_api.scoring.chunks.ChunkScorer` (the service's
:class:`~tagifai_api.ml.predict.Predictor`, the API's rules for a text, the ``score`` command's
output columns), so Spark and the local scorer give a row the same answer:

- :func:`score_frame`: a DataFrame of records in, the ``score`` command's rows out, through
  ``mapInArrow`` (``mapInPandas`` without the pandas round trip: the scorer builds Arrow batches
  itself). ``python -m tagifai_api score --engine spark`` is built on it.
- :func:`tagifai_udf`: a pandas UDF for ``df.withColumn(...)``, the way MLflow's ``spark_udf``
  hands a registered model to batch jobs.

The model version reaches the executors either shipped with the job (:func:`model_ref` with
``ship=True`` calls ``SparkContext.addFile`` on the version's directory, about 1 MB: no shared
storage needed, any cluster manager) or as a path that every executor can read (shared storage).
Each executor Python process loads it once, on its first batch, and keeps it in a module-level
cache keyed by the version's path and the sha256 of its model file; Spark reuses its Python
workers across tasks (``spark.python.worker.reuse``, on by default), so later batches and tasks cost
no load. The executor checks that sha256 against the one the driver read, so it never scores with
a different model that happens to have the same name.

PySpark and pyarrow are imported only inside these functions: the rest of the package runs without
them (``requirements-spark.txt`` installs them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import Predictor
from tagifai_api.scoring.chunks import ChunkScorer, Columns, ScorerConfig, output_schema, text_ids
from tagifai_api.scoring.formats import CSV, JSONL, PARQUET

#: the column Spark's CSV reader fills with a record it could not split into the header's fields
CORRUPT = "_corrupt_record"
ROW = "_row"  # the record's 1-based row number, when the caller computed it
LINE = "_line"  # JSON Lines: the line the record is on
#: the rejected-rows view of :func:`score_frame`: the local scorer's errors file, as columns
ERROR_FIELDS = ("line", "row", "id", "reason")

_predictors: dict[tuple[str, str], Predictor] = {}  # (version path, model sha256) -> loaded version
loads = 0  # versions this process has loaded: one per version, whatever the number of batches


@dataclass(frozen=True)
class ModelRef:
    """A model version as the executors find it: small and picklable, so it travels in the closure.

    Attributes:
        version: the version's name (and its directory's).
        path: the version's directory on the driver, or on storage every executor reads.
        checksum: the sha256 of its model file, as its manifest says.
        classes: its tags, in its order (they name the probability columns).
        shipped: the executors fetch it with ``SparkFiles.get(version)`` (see :func:`model_ref`).
    """

    version: str
    path: str
    checksum: str
    classes: tuple[str, ...]
    shipped: bool = True


def model_ref(spark, artifacts_dir: str | Path, version: str, ship: bool = True) -> ModelRef:
    """Verify a version on the driver (every file against its manifest) and make it reachable.

    Args:
        spark: the session.
        artifacts_dir: the folder of versions.
        version: a version name (not ``default``: the registry resolves that before a job starts).
        ship: send the version's directory with the job (``SparkContext.addFile``); with ``False``
            ``artifacts_dir`` must be on storage that every executor mounts at the same path.

    Raises:
        ArtifactError: the version is missing or damaged.
    """
    model = artifacts.load(Path(artifacts_dir), version)
    path = str(model.path.resolve())
    ref = ModelRef(version=model.version, path=path, checksum=model.manifest["files"][artifacts.COMPILED_FILE],
                   classes=model.compiled.classes, shipped=ship)
    if ship:
        sc = spark.sparkContext
        # a path is shipped once per application; adding it again is refused by Spark
        if not any(f.rstrip("/").endswith("/" + model.version) for f in sc.listFiles):
            sc.addFile(path, recursive=True)
    return ref


def predictor(ref: ModelRef) -> Predictor:
    """This process's predictor for ``ref``, loaded on first use and then reused."""
    global loads
    key = (ref.path, ref.checksum)
    found = _predictors.get(key)
    if found is not None:
        return found
    if ref.shipped:
        from pyspark import SparkFiles

        where = Path(SparkFiles.get(ref.version))
    else:
        where = Path(ref.path)
    model = artifacts.load(where.parent, where.name)
    if model.manifest["files"][artifacts.COMPILED_FILE] != ref.checksum:
        raise artifacts.ArtifactError(f"{where}: its model file is not the one the driver verified "
                                      f"(sha256 {ref.checksum[:12]}...); ship the version with the job")
    found = _predictors[key] = Predictor(model)
    loads += 1
    return found


# --- the transform -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What the columns of the DataFrame given to :func:`score_frame` hold.

    Attributes:
        input_format: ``parquet`` for typed columns (any DataFrame: texts must be strings), ``csv`` for
            the string columns of Spark's CSV reader (a null is an empty field; a ``_corrupt_record``
            column may follow), ``jsonl`` for one ``value`` column of raw JSON lines.
        csv_width: the CSV header's number of fields (to report a record that has another number).
    """

    input_format: str = PARQUET
    csv_width: int = 0


def _csv_problem(raw: str, width: int) -> str:
    """The local scorer's reason for a CSV record that does not split into ``width`` fields."""
    try:
        fields = next(csv.reader(io.StringIO(raw, newline=""), strict=True), [])
    except csv.Error as exc:
        return f"not valid CSV: {exc}"
    return f"not valid CSV: expected {width} fields, found {len(fields)}"


def _items(batch, layout: Layout, columns: Columns) -> tuple[list, Sequence]:
    """A record batch as the scorer's ``(line, payload, error)`` items and row numbers."""
    names = batch.schema.names
    n = batch.num_rows
    rows = batch.column(ROW).to_pylist() if ROW in names else [None] * n
    lines = batch.column(LINE).to_pylist() if LINE in names else [None] * n
    if layout.input_format == JSONL:
        # the local reader hands the scorer whole lines, end included (the same JSON errors name the same place)
        payloads = [None if v is None else v + "\n" for v in batch.column("value").to_pylist()]
        return [(line, payload, None) for line, payload in zip(lines, payloads, strict=True)], rows
    width = len(columns.text) + (columns.id is not None)
    values = zip(*[batch.column(i).to_pylist() for i in range(width)], strict=True) if width else [()] * n
    if layout.input_format != CSV:
        return [(line, payload, None) for line, payload in zip(lines, values, strict=True)], rows
    corrupt = batch.column(CORRUPT).to_pylist() if CORRUPT in names else [None] * n
    items = []
    for line, fields, raw in zip(lines, values, corrupt, strict=True):
        if raw is not None:
            items.append((line, None, _csv_problem(raw, layout.csv_width)))
        else:  # CSV has no nulls: Spark reads an empty field as one
            items.append((line, tuple("" if f is None else f for f in fields), None))
    return items, rows


def _score_batches(batches: Iterator, ref: ModelRef, config: ScorerConfig, layout: Layout, nested: bool,
                   rejected_only: bool, counters) -> Iterator:
    """The ``mapInArrow`` function: scored rows, or with ``rejected_only`` the rejected ones."""
    import pyarrow as pa

    scorer = ChunkScorer(config, predictor(ref))
    id_type = scorer.arrow_schema().field("id").type
    for batch in batches:
        items, rows = _items(batch, layout, config.columns)
        ids, texts, errors = scorer.check(items, rows)
        if counters is not None:
            counters[0].add(len(ids))
            counters[1].add(len(errors))
        if rejected_only:
            lines, rows, idents, reasons = (list(c) for c in zip(*errors, strict=True)) if errors else ([],) * 4
            yield pa.RecordBatch.from_arrays(
                [pa.array(lines, pa.int64()), pa.array(rows, pa.int64()),
                 pa.array(text_ids(idents) if pa.types.is_string(id_type) else idents, id_type),
                 pa.array(reasons, pa.string())], names=list(ERROR_FIELDS))
        else:
            yield scorer.arrow_rows(ids, texts, nested=nested)


def scorer_config(ref: ModelRef, columns: Columns, *, input_format: str = PARQUET, max_text_length: int,
                  batch_size: int = 100, id_type: str = "string") -> ScorerConfig:
    """The scorer's settings for a Spark job (no files of its own: Spark reads and writes)."""
    return ScorerConfig(artifacts_dir=str(Path(ref.path).parent), version=ref.version, input_format=input_format,
                        output_format=PARQUET, gzip_output=False, columns=columns, max_text_length=max_text_length,
                        batch_size=batch_size, id_type=id_type)


def result_schema(config: ScorerConfig, classes: Sequence[str], nested: bool = False, rejected_only: bool = False):
    """The Arrow schema of :func:`score_frame`'s result."""
    import pyarrow as pa

    schema = output_schema(tuple(classes), config.id_type, False, nested)
    if rejected_only:
        return pa.schema([pa.field("line", pa.int64()), pa.field("row", pa.int64()), schema.field("id"),
                          pa.field("reason", pa.string())])
    return schema


def score_frame(df, ref: ModelRef, config: ScorerConfig, layout: Layout = Layout(), *, nested: bool = False,
                rejected_only: bool = False, counters=None):
    """The ``score`` command's rows for the records of ``df``, as a new DataFrame.

    Args:
        df: the text column(s) first, then the id column if ``config.columns`` has one, then
            optionally ``_row`` (the row number: the id when there is no id column, and what a
            rejection reports) and ``_line``; see :class:`Layout` for the CSV and JSON Lines forms.
        ref: the version, from :func:`model_ref`.
        config: from :func:`scorer_config`.
        layout: what the columns hold.
        nested: the JSON Lines shape (``probabilities`` one struct) instead of flat columns.
        rejected_only: instead of the scored rows, the rejected ones: ``line``, ``row``, ``id``,
            ``reason``, as the local scorer's errors file has them.
        counters: two Spark accumulators, incremented by the rows scored and rejected.
    """
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(result_schema(config, ref.classes, nested, rejected_only))

    def score(batches):
        return _score_batches(batches, ref, config, layout, nested, rejected_only, counters)

    return df.mapInArrow(score, schema)


# --- the pandas UDF ----------------------------------------------------------------------------


def tagifai_udf(ref: ModelRef, *, max_text_length: int, two_columns: bool = False, batch_size: int = 100):
    """A pandas UDF tagging a text column (or a title and a description column, ``two_columns``).

    ``df.withColumn("tags", udf("text"))`` adds a struct: ``predicted_tag``, ``confidence``,
    ``probability_<tag>`` for each tag, ``low_confidence``, ``model_version``, and ``rejected``: why
    a text was not scored (blank, too long: the API's rules), with the other fields null.
    """
    import pyarrow as pa
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.pandas.types import from_arrow_schema

    names = ("title", "description") if two_columns else ("text",)
    columns = Columns(text=tuple(range(len(names))), id=None, names=names)
    config = scorer_config(ref, columns, max_text_length=max_text_length, batch_size=batch_size, id_type="int64")
    fields = [f for f in result_schema(config, ref.classes) if f.name != "id"]
    struct = from_arrow_schema(pa.schema([*fields, pa.field("rejected", pa.string())]))

    @pandas_udf(struct)
    def tag(*texts):
        return _udf_batch(ref, config, texts)

    return tag


def _udf_batch(ref: ModelRef, config: ScorerConfig, texts):
    """One batch of the UDF: a row per text, in order; a rejected one has nulls and its reason."""
    import pandas as pd

    found = predictor(ref)
    scorer = ChunkScorer(config, found)
    values = [s.astype(object).where(s.notna(), None).tolist() for s in texts]
    n = len(values[0])
    # with no id column the scorer's id is the row number: here the position in the batch, from 1
    ids, cleaned, errors = scorer.check([(None, v, None) for v in zip(*values, strict=True)], range(1, n + 1))
    tags, confidence, proba, low = found.predict_clean_columns(cleaned, config.batch_size)
    out: dict[str, list] = {name: [None] * n for name in
                            ("predicted_tag", "confidence", *(f"probability_{c}" for c in found.classes),
                             "low_confidence", "model_version", "rejected")}
    for k, (i, tag) in enumerate(zip(ids, tags, strict=True)):
        at = i - 1
        out["predicted_tag"][at] = tag
        out["confidence"][at] = float(confidence[k])
        for j, c in enumerate(found.classes):
            out[f"probability_{c}"][at] = float(proba[k, j])
        out["low_confidence"][at] = bool(low[k])
        out["model_version"][at] = found.version
    for _line, row, _ident, reason in errors:
        out["rejected"][row - 1] = reason
    return pd.DataFrame(out)
