"""``score --engine spark``: the ``score`` command as a Spark application.

Usage errors are found before a JVM starts where they can be (options, local paths, the model
version), so they stay fast. Then a session is started (``local[*]`` unless ``--master`` says
otherwise), or joined when ``spark-submit`` started this process and owns the master. The input is
read with Spark's reader for its format, with the same rules as the local scorer's: CSV with a
header and quoted fields that may span lines, JSON Lines as raw lines decoded by the scorer, Parquet
with its types. Then :func:`tagifai_api.scoring.spark.score_frame` scores it and Spark writes the
output, a directory of part files.

Rows are numbered as the local scorer numbers them only where a number is needed (it is the id when
there is no ``--id-column``, and a rejected row reports it): a counting pass gives each partition's
first row, the rest is arithmetic in the JVM. Rejected rows are counted during the scoring pass; only
if there are some does a second pass, which checks rows without scoring them, write them to
``OUTPUT.errors.jsonl/`` (JSON Lines part files, the local errors file's fields).

A failed or interrupted job leaves no output to resume: Spark reruns a failed task itself, and a job
that fails anyway is run again from the start (with ``--force`` if it left a directory).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

from tagifai_api.scoring import spark as spark_scoring
from tagifai_api.scoring.chunks import id_arrow_type
from tagifai_api.scoring.formats import (
    CSV,
    JSONL,
    PARQUET,
    FormatError,
    Reader,
    format_of,
    is_gzip_name,
    open_input,
)
from tagifai_api.scoring.job import (
    Interrupted,
    ScoreError,
    ScoreOptions,
    Summary,
    UsageError,
    load_version,
    resolve_columns,
)

log = logging.getLogger("tagifai_api.scoring")

MIN_JAVA = 17  # Spark 4 runs on Java 17 and newer
LOG4J_CONFIG = Path(__file__).with_name("spark-log4j2.properties")
_PEEK_LINES = 1000  # JSON Lines: lines searched for a first object to check the columns against
_MID_BITS = 33  # monotonically_increasing_id(): partition index << 33 | position in the partition


def run(opts: ScoreOptions, master: str | None = None, output: str | None = None, spark=None) -> Summary:
    """Score ``opts.input`` into the directory ``output`` (``opts.output`` when not given: a URI
    such as ``s3a://bucket/tags.parquet`` must be passed here, a path would lose its ``//``).

    ``spark``: a session to use (and leave running) instead of starting one from ``master``.

    Raises:
        UsageError: nothing was written (bad option, missing input, existing output, no Java).
        ScoreError: the Spark job failed; nothing is kept.
        Interrupted: Ctrl-C; the jobs were cancelled and nothing is kept.
    """
    started = time.monotonic()
    output = (output or str(opts.output)).rstrip("/")
    errors_out = output + ".errors.jsonl"
    if opts.input == "-":
        raise UsageError("--engine spark reads a file, a directory or a URI Spark can read, not standard input")
    try:
        in_format = format_of(opts.input, opts.input_format, "input")
        out_format = format_of(output, None, "output")
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    _check_local_paths(opts.input, output, errors_out, opts.force)
    model = load_version(opts, opts.version)
    own = spark is None
    if own:
        spark = session(master, opts.quiet)
    written: list[str] = []  # removed again if a later step fails: a run leaves all of its output or none
    try:
        return _run(spark, opts, model, in_format, out_format, output, errors_out, started, written)
    except UsageError:
        raise
    except KeyboardInterrupt:
        spark.sparkContext.cancelAllJobs()
        _remove(spark, written)
        raise Interrupted(signal.SIGINT, 0, resumable=False) from None
    except Exception as exc:  # noqa: BLE001 - a failed job (after Spark's own retries) is one line
        log.debug("the Spark job failed", exc_info=True)
        _remove(spark, written)
        raise ScoreError(f"the Spark job failed: {reason(exc)}; no output is kept", resumable=False) from None
    finally:
        if own:
            spark.stop()


def _remove(spark, paths: list[str]) -> None:
    for path in paths:
        try:
            _delete(spark, path)
        except Exception:  # noqa: BLE001 - the failure being reported matters more
            log.warning("could not remove %s", path)


def _run(spark, opts, model, in_format, out_format, output, errors_out, started, written) -> Summary:
    from pyspark.errors import AnalysisException

    try:
        with _step("reading the input's columns"):
            df, available, width, types = _read(spark, opts.input, in_format)
        columns = resolve_columns(available, opts, positional=in_format != JSONL)
    except AnalysisException as exc:
        raise UsageError(f"cannot read {opts.input}: {_first_line(exc)}") from None
    wanted = [*columns.names, *([opts.id_column] if opts.id_column else [])]
    if in_format != JSONL:
        df = df.select(*[_col(n) for n in wanted], *([spark_scoring.CORRUPT] if in_format == CSV else []))
    ref = spark_scoring.model_ref(spark, opts.artifacts_dir, model.version)
    config = spark_scoring.scorer_config(
        ref, columns, input_format=in_format, max_text_length=opts.max_text_length, batch_size=opts.batch_size,
        id_type=id_arrow_type(in_format, opts.id_column, types.get(opts.id_column)))
    layout = spark_scoring.Layout(input_format=in_format, csv_width=width)
    sc = spark.sparkContext
    if opts.force:
        for path in (output, errors_out):
            _delete(spark, path)
    scored_count, rejected_count = sc.accumulator(0), sc.accumulator(0)
    with _step("numbering the rows" if opts.id_column is None else "planning"):
        records = _spread(spark, *(_numbered(df, in_format) if opts.id_column is None else _records(df, in_format)))
    scored = spark_scoring.score_frame(records, ref, config, layout, nested=out_format == JSONL,
                                       counters=(scored_count, rejected_count))
    written.append(output)  # from here the path is this run's: Spark refuses to write over one
    with _step("scoring and writing"):
        _write(scored, out_format, output, compress=is_gzip_name(output))
    rejected = rejected_count.value
    if rejected:
        written.append(errors_out)
        with _step("writing the rejected rows"):
            errors = spark_scoring.score_frame(_spread(spark, *_numbered(df, in_format)), ref, config, layout,
                                               rejected_only=True)
            _write(errors.orderBy("row"), JSONL, errors_out, compress=False, keep_nulls=True)
    scored_rows = scored_count.value
    return Summary(rows=scored_rows + rejected, scored=scored_rows, rejected=rejected, resumed_from=0,
                   seconds=time.monotonic() - started, output=Path(output) if _is_local(output) else output,
                   errors=errors_out if rejected else None)


# --- the session -------------------------------------------------------------------------------


def session(master: str | None = None, quiet: bool = True, conf: dict[str, str] | None = None):
    """A Spark session for scoring: ``master`` (default ``local[*]``), or the one ``spark-submit``
    started this process with.

    A local master binds to the loopback interface, without the web UI, and runs the Python workers
    with this interpreter and this package importable; Spark's own log is quiet (-v: Spark's defaults).

    Raises:
        UsageError: PySpark or Java is missing, or Spark cannot start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UsageError("--engine spark needs PySpark, which is not installed: "
                         "pip install -r requirements-spark.txt") from None
    if not log.isEnabledFor(logging.DEBUG):
        # py4j narrates every connection at INFO, and a Ctrl-C during a call as tracebacks at ERROR,
        # some of them through the root logger
        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        if _not_py4j not in logging.getLogger().filters:
            logging.getLogger().addFilter(_not_py4j)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit owns the JVM, the master and the logs
    if not submitted:
        java_version()
    builder = SparkSession.builder.appName("tagifai-score")
    if master or not submitted:
        builder = builder.master(master or "local[*]")
    local = (master or ("" if submitted else "local")).startswith("local")
    if local:
        # executors are threads of this machine's driver: nothing needs to reach them from outside
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        root = str(Path(__file__).resolve().parents[2])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *filter(None, paths)])
        builder = (builder.config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1"))
    if not submitted and not log.isEnabledFor(logging.DEBUG):
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}")
    builder = builder.config("spark.ui.showConsoleProgress", str(not quiet and sys.stderr.isatty()).lower())
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    # PySpark warns about pandas 3 for pandas-on-Spark; this code moves Arrow batches and is tested on them
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - whatever stops the JVM, the user gets one line
        raise UsageError(f"cannot start Spark: {_first_line(exc)}") from None


def _not_py4j(record: logging.LogRecord) -> bool:
    return f"{os.sep}py4j{os.sep}" not in record.pathname


def java_version() -> int:
    """The major version of the Java Spark would start (``JAVA_HOME``, else ``java`` on the PATH).

    Raises:
        UsageError: there is none, or it is older than :data:`MIN_JAVA`.
    """
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        raise UsageError(f"--engine spark needs Java {MIN_JAVA} or newer, and none was found "
                         f"({'JAVA_HOME=' + home if home else 'no java on the PATH'}): "
                         "install one, e.g. apt-get install default-jre-headless")
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--engine spark: cannot run {java} ({exc})") from None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    if not found:
        raise UsageError(f"--engine spark: cannot tell the version of {java}")
    major = int(found[2]) if found[1] == "1" and found[2] else int(found[1])  # "1.8.0" is Java 8
    if major < MIN_JAVA:
        raise UsageError(f"--engine spark needs Java {MIN_JAVA} or newer; {java} is Java {major}")
    return major


# --- reading, numbering, writing ---------------------------------------------------------------


def _read(spark, path: str, fmt: str):
    """``(records, column names, CSV width, Arrow types of Parquet columns)`` of the input."""
    from pyspark.sql import types as T

    peeked = _peek(path, fmt)
    if fmt == CSV:
        reader = spark.read.options(header=True, multiLine=True, escape='"', mode="PERMISSIVE", encoding="UTF-8")
        names = peeked.header if peeked is not None else reader.csv(path).columns
        if names and names[0].startswith("\ufeff"):
            names[0] = names[0][1:]
        schema = T.StructType([T.StructField(n, T.StringType()) for n in names]
                              + [T.StructField(spark_scoring.CORRUPT, T.StringType())])
        df = reader.schema(schema).option("columnNameOfCorruptRecord", spark_scoring.CORRUPT).csv(path)
        return df, names, len(names), {}
    if fmt == JSONL:
        import orjson

        df = spark.read.text(path)
        if peeked is not None:
            return df, list(peeked.first_object) if peeked.first_object is not None else None, 0, {}
        first = None
        for row in df.limit(_PEEK_LINES).collect():
            try:
                obj = orjson.loads(row.value.lstrip("\ufeff"))
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                first = obj
                break
        return df, list(first) if first is not None else None, 0, {}
    df = spark.read.parquet(path)
    from pyspark.sql.pandas.types import to_arrow_type

    types = {}
    for field in df.schema.fields:
        try:
            types[field.name] = to_arrow_type(field.dataType)
        except Exception:  # noqa: BLE001 - a type Arrow has no name for is no id type anyway
            pass
    return df, df.columns, 0, types


def _peek(path: str, fmt: str) -> Reader | None:
    """A local file's header or first JSON object, read here rather than by a Spark job."""
    if fmt == PARQUET or not _is_local(path):
        return None
    local = Path(urlparse(path).path if path.startswith("file:") else path)
    if not local.is_file():
        return None
    try:
        source = open_input(str(local), fmt)
    except FormatError:
        return None
    try:
        return Reader(source, fmt)
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    finally:
        source.close()


def _col(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _records(df, fmt: str):
    """The records, unnumbered (JSON Lines: the blank lines dropped, as they are no records), and
    their number of partitions."""
    from pyspark.sql import functions as F

    partitions = df.rdd.getNumPartitions()
    if fmt == JSONL:
        return df.filter(~F.col("value").rlike(r"^\s*$")), partitions
    return df, partitions


def _numbered(df, fmt: str):
    """The records with ``_row`` (and, for JSON Lines, ``_line``), numbered from 1 in the input's
    order (Spark reads one file in order, split into consecutive partitions), and the number of
    partitions that hold records."""
    from pyspark.sql import functions as F

    mask = (1 << _MID_BITS) - 1
    blank = F.col("value").rlike(r"^\s*$") if fmt == JSONL else None
    pid = F.spark_partition_id().alias("p")
    if fmt == JSONL:
        counts = df.groupBy(pid).agg(F.count(F.lit(1)).alias("lines"), F.count(F.when(~blank, 1)).alias("rows"))
    elif fmt == CSV:  # the fields are read, so malformed records are counted as the scoring pass sees them
        counts = df.groupBy(pid).agg(F.count(F.struct(*[_col(c) for c in df.columns])).alias("rows"))
    else:  # Parquet: no field needs reading
        counts = df.groupBy(pid).agg(F.count(F.lit(1)).alias("rows"))
    found = {r.p: (r.lines if fmt == JSONL else 0, r.rows) for r in counts.collect()}
    partitions = max(found, default=-1) + 1  # any later partition is empty: no row needs its number

    def number(kind: int, mid):
        """``mid``'s partition's first number (``kind`` 0: lines, 1: rows) plus its place in it."""
        firsts, total = [], 1
        for p in range(partitions):
            firsts.append(total)
            total += found.get(p, (0, 0))[kind]
        table = F.array(*[F.lit(f).cast("long") for f in firsts])
        return F.element_at(table, (F.shiftright(mid, _MID_BITS) + 1).cast("int")) + mid.bitwiseAND(F.lit(mask))

    if fmt == JSONL:
        lines = df.withColumn("_all", F.monotonically_increasing_id())
        # a filter is never moved across a non-deterministic column, so _kept counts the kept lines
        kept = lines.filter(~blank).withColumn("_kept", F.monotonically_increasing_id())
        return kept.select("value", number(1, F.col("_kept")).alias(spark_scoring.ROW),
                           number(0, F.col("_all")).alias(spark_scoring.LINE)), partitions
    return df.withColumn("_mid", F.monotonically_increasing_id()).select(
        *[_col(c) for c in df.columns], number(1, F.col("_mid")).alias(spark_scoring.ROW)), partitions


def _spread(spark, df, partitions: int):
    """One partition per core at least: a CSV file is read by one task (its records may span lines,
    so it cannot be split), and a small Parquet file has one row group."""
    cores = spark.sparkContext.defaultParallelism
    if partitions < cores:
        return df.repartition(cores)
    return df


def _write(df, fmt: str, path: str, compress: bool, keep_nulls: bool = False) -> None:
    from pyspark.errors import AnalysisException

    writer = df.write.mode("errorifexists")
    if compress:
        writer = writer.option("compression", "gzip")
    try:
        if fmt == PARQUET:
            writer.parquet(path)
        elif fmt == CSV:
            writer.options(header=True, escape='"').csv(path)
        else:
            writer.option("ignoreNullFields", str(not keep_nulls).lower()).json(path)
    except AnalysisException as exc:
        if "PATH_ALREADY_EXISTS" in (exc.getCondition() or ""):
            raise UsageError(f"{path} exists; use --force to overwrite") from None
        raise


def _is_local(path: str) -> bool:
    scheme = urlparse(path).scheme
    return scheme in ("", "file")


def _check_local_paths(input_path: str, output: str, errors_out: str, force: bool) -> None:
    """What can be checked without Spark, for paths on this machine (a URI is Spark's to check)."""
    if _is_local(input_path):
        src = Path(urlparse(input_path).path if input_path.startswith("file:") else input_path)
        if not src.exists():
            raise UsageError(f"cannot read {input_path}: No such file or directory")
        if _is_local(output) and src.resolve() == Path(output).resolve():
            raise UsageError("the output would overwrite the input")
    if not _is_local(output):
        return
    out = Path(urlparse(output).path if output.startswith("file:") else output)
    if not out.parent.is_dir():
        raise UsageError(f"the output's directory {out.parent} does not exist")
    for path in (out, Path(str(out) + ".errors.jsonl")):
        if path.exists() and not force:
            raise UsageError(f"{path} exists; use --force to overwrite")


def _delete(spark, path: str) -> None:
    """Remove a file or directory on any file system Spark writes to (``--force``)."""
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(path)
    target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(target, True)


@contextlib.contextmanager
def _step(name: str):
    """Log how long a step of the job took (with -v)."""
    start = time.monotonic()
    yield
    log.debug("spark: %s took %.1f s", name, time.monotonic() - start)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def reason(exc: BaseException) -> str:
    """One line for a failed job: a Python worker's own exception (the last line of its traceback,
    which Spark wraps in pages of JVM frames), else the first line of the message."""
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        tail = text.split("Traceback (most recent call last)")[-1]
        found = [line.strip() for line in tail.splitlines() if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line)]
        if found:
            return found[-1]
    return _first_line(exc)
