"""Scoring on Spark, in real PySpark local mode: the local scorer's rows and rejections, Parquet both
ways, the model loaded once per Python worker, the pandas UDF, and the command line's usage errors.

The jobs share one session (``spark`` in conftest.py); the command line's own run of a Spark job is
the README's example (tests/test_readme.py)."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tagifai_api import settings
from tests.helpers import ROOT, cli_env, command, default_of

MAX_TEXT = settings.DEFAULTS["MAX_TEXT_LENGTH"]


@pytest.fixture(scope="module")
def version(artifacts_dir) -> str:
    return default_of(artifacts_dir)


@pytest.fixture
def on_spark(spark, artifacts_dir, version):
    """Run ``score --engine spark`` in this process, on the shared session; returns its summary."""
    from tagifai_api.scoring import job, spark_job

    def run(src: Path, out: Path, **options):
        opts = job.ScoreOptions(input=str(src), output=out, artifacts_dir=artifacts_dir, max_text_length=MAX_TEXT,
                                version=version, quiet=True, **options)
        return spark_job.run(opts, spark=spark)

    return run


def parts(directory: Path) -> list[dict]:
    """The rows of a directory of Spark part files (JSON Lines or CSV)."""
    rows: list[dict] = []
    for path in sorted(glob.glob(str(directory / "part-*"))):
        text = Path(path).read_text(encoding="utf-8")
        if ".csv" in Path(path).name:
            rows += list(csv.DictReader(io.StringIO(text)))
        else:
            rows += [json.loads(line) for line in text.splitlines()]
    return rows


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same_predictions(local: list[dict], spark: list[dict]) -> None:
    """Row for row by id: tags and flags exactly, probabilities within 1e-9."""
    by_id = {row["id"]: row for row in spark}
    assert len(by_id) == len(spark) == len(local)
    for mine in local:
        theirs = by_id[mine["id"]]
        assert theirs["predicted_tag"] == mine["predicted_tag"], mine["id"]
        assert theirs["low_confidence"] == mine["low_confidence"], mine["id"]
        assert theirs["model_version"] == mine["model_version"]
        assert theirs["confidence"] == pytest.approx(mine["confidence"], abs=1e-9)
        for tag, p in mine["probabilities"].items():
            assert theirs["probabilities"][tag] == pytest.approx(p, abs=1e-9), (mine["id"], tag)


@pytest.mark.integration
def test_spark_gives_the_local_scorers_rows_on_the_dataset(on_spark, score, dataset_csv, tmp_path):
    """The whole dataset, no --id-column: Spark numbers the rows as the local scorer does (records
    spanning several lines included), and every prediction agrees."""
    src = tmp_path / "in.csv"
    src.write_bytes(dataset_csv)
    proc = score(src, "-o", tmp_path / "local.jsonl", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = on_spark(src, tmp_path / "spark.jsonl")
    assert (summary.rows, summary.scored, summary.rejected, summary.errors) == (764, 764, 0, None)
    local = read_jsonl(tmp_path / "local.jsonl")
    assert [r["id"] for r in local] == list(range(1, 765))
    assert_same_predictions(local, parts(tmp_path / "spark.jsonl"))
    assert not (tmp_path / "spark.jsonl.errors.jsonl").exists()


@pytest.mark.integration
def test_bad_rows_are_reported_as_the_local_scorer_reports_them(on_spark, score, tmp_path):
    """The same rows rejected for the same reasons, with the same row numbers and ids (CSV has no
    line numbers in Spark: its reader does not count lines), and the same rows scored."""
    long_text = "x " * (MAX_TEXT // 2 + 1)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(
        "id,title,description\n"
        "a,Image segmentation,with U-Net\n"
        "b,,\n"
        "c,   ,  \n"
        f"d,{long_text},\n"
        "e,only two fields\n"
        ',Question answering,with BERT\n'
        'g,"A title over\ntwo lines",and a description\n'
        "\n"
        "h,Kubernetes model serving,monitoring\n"
        "i,one,field,too many\n", encoding="utf-8")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_bytes(
        b'{"text": "Object detection with YOLO", "ref": "k1"}\n'
        b'{"text": "unterminated\n'
        b'[1, 2]\n'
        b'{"other": "no text", "ref": "k4"}\n'
        b'{"text": 42, "ref": "k5"}\n'
        b'{"text": "Pose estimation", "ref": 7}\n'
        b'{"text": "Anomaly detection"}\n'
        b'\n'
        b'   \n'
        b'{"text": "Named entity recognition", "ref": "k10"}\n')
    for src, options, scored in ((bad_csv, ["--id-column", "id"], 3), (bad_jsonl, ["--id-column", "ref"], 3)):
        local_out = tmp_path / f"local-{src.suffix[1:]}.csv"
        proc = score(src, "-o", local_out, *options)
        assert proc.returncode == 3, proc.stderr
        summary = on_spark(src, tmp_path / f"spark-{src.suffix[1:]}.csv", id_column=options[1])
        local_errors = read_jsonl(Path(f"{local_out}.errors.jsonl"))
        assert (summary.scored, summary.rejected) == (scored, len(local_errors))
        spark_errors = parts(tmp_path / f"spark-{src.suffix[1:]}.csv.errors.jsonl")
        if src is bad_csv:
            for e in local_errors:
                e["line"] = None
        assert spark_errors == local_errors
        local_rows = list(csv.DictReader(io.StringIO(local_out.read_text(encoding="utf-8"))))
        spark_rows = parts(tmp_path / f"spark-{src.suffix[1:]}.csv")
        assert sorted(r["id"] for r in spark_rows) == sorted(r["id"] for r in local_rows)
        assert {r["id"]: r["predicted_tag"] for r in spark_rows} == {r["id"]: r["predicted_tag"] for r in local_rows}


@pytest.mark.integration
def test_parquet_in_and_out_with_both_engines(on_spark, score, dataset_csv, tmp_path):
    """A Parquet input with typed columns: a file from the local scorer, a directory of part files
    from Spark, with the same schema (the integer id stays an integer) and the same rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(csv.DictReader(io.StringIO(dataset_csv.decode("utf-8"))))
    pq.write_table(pa.table({"project": [int(r["id"]) for r in rows], "title": [r["title"] for r in rows],
                             "description": [r["description"] for r in rows], "tag": [r["tag"] for r in rows]}),
                   tmp_path / "in.parquet", row_group_size=300)
    proc = score(tmp_path / "in.parquet", "-o", tmp_path / "local.parquet", "--id-column", "project",
                 "--workers", "2", "--chunk-size", "100")
    assert proc.returncode == 0, proc.stderr
    summary = on_spark(tmp_path / "in.parquet", tmp_path / "spark.parquet", id_column="project")
    assert summary.scored == len(rows)
    local = pq.read_table(tmp_path / "local.parquet")
    spark = pq.read_table(tmp_path / "spark.parquet")
    assert (tmp_path / "local.parquet").is_file() and (tmp_path / "spark.parquet").is_dir()
    assert local.schema.remove_metadata() == spark.schema.remove_metadata()
    assert local.schema.field("id").type == pa.int64()
    assert local.column("id").to_pylist() == [int(r["id"]) for r in rows]  # the local file keeps input order

    def nested(table) -> list[dict]:
        out = []
        for r in table.to_pylist():
            probs = {k[len("probability_"):]: r.pop(k) for k in list(r) if k.startswith("probability_")}
            out.append({**r, "probabilities": probs})
        return out

    assert_same_predictions(nested(local), nested(spark))


@pytest.mark.integration
def test_the_model_is_loaded_once_per_python_worker_not_per_batch(spark, artifacts_dir, version, dataset_csv):
    """Batches of 50 rows over 2 tasks: each Python worker process loads the version at most once."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from tagifai_api.scoring import spark as spark_scoring
    from tagifai_api.scoring.chunks import Columns

    ref = spark_scoring.model_ref(spark, artifacts_dir, version)
    config = spark_scoring.scorer_config(ref, Columns(text=(0,), id=1, names=("text",), id_name="id"),
                                         max_text_length=MAX_TEXT, id_type="int64")
    rows = list(csv.DictReader(io.StringIO(dataset_csv.decode("utf-8"))))
    df = spark.createDataFrame([(f"{r['title']} {r['description']}", int(r["id"])) for r in rows],
                               "text string, id long")

    def probe(batches):
        import os as worker_os

        from tagifai_api.scoring import spark as worker_scoring

        before = worker_scoring.loads
        for out in worker_scoring._score_batches(batches, ref, config, spark_scoring.Layout(), False, False, None):
            yield pa.RecordBatch.from_pydict({"pid": [worker_os.getpid()], "loaded": [worker_scoring.loads - before],
                                              "rows": [out.num_rows]})

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")
    try:
        seen = df.repartition(2).mapInArrow(probe, "pid long, loaded long, rows long").groupBy("pid").agg(
            F.max("loaded").alias("loaded"), F.count("*").alias("batches"), F.sum("rows").alias("rows")).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert sum(r.rows for r in seen) == len(rows)
    assert sum(r.batches for r in seen) >= len(rows) // 50
    assert all(r.loaded <= 1 for r in seen), seen


@pytest.mark.integration
def test_the_pandas_udf_tags_a_column_like_the_local_scorer(spark, score, artifacts_dir, version, dataset_csv,
                                                            tmp_path):
    """``df.withColumn("tags", udf("text"))``: the local scorer's predictions; a blank text gets
    nulls and the reason instead."""
    from tagifai_api.scoring import spark as spark_scoring

    rows = list(csv.DictReader(io.StringIO(dataset_csv.decode("utf-8"))))[:200]
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": f"{r['title']} {r['description']}".strip(), "ref": r["id"]}) + "\n"
                           for r in rows), encoding="utf-8")
    proc = score(src, "-o", tmp_path / "local.jsonl", "--id-column", "ref")
    assert proc.returncode == 0, proc.stderr
    ref = spark_scoring.model_ref(spark, artifacts_dir, version)
    classes = ref.classes
    tag = spark_scoring.tagifai_udf(ref, max_text_length=MAX_TEXT)
    texts = [(json.loads(line)["text"], json.loads(line)["ref"]) for line in src.read_text().splitlines()]
    df = spark.createDataFrame([*texts, ("   ", "blank")], "text string, ref string")
    out = {r.ref: r.tags.asDict() for r in df.withColumn("tags", tag("text")).collect()}
    assert out["blank"] == {**{k: None for k in out["blank"] if k != "rejected"}, "rejected": "blank text"}
    spark_rows = [{"id": ref_, "model_version": t["model_version"], "predicted_tag": t["predicted_tag"],
                   "confidence": t["confidence"], "low_confidence": t["low_confidence"],
                   "probabilities": {c: t[f"probability_{c}"] for c in classes}}
                  for ref_, t in out.items() if ref_ != "blank"]
    assert all(t["rejected"] is None for ref_, t in out.items() if ref_ != "blank")
    assert_same_predictions(read_jsonl(tmp_path / "local.jsonl"), spark_rows)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--workers", "2"], {}, "error: --workers is for --engine local"),
    (["--resume"], {}, "error: --resume is for --engine local"),
    ([], {"JAVA_HOME": "/nonexistent"}, "error: --engine spark needs Java 17 or newer, and none was found"),
    (["--master", "local[2]", "--engine", "local"], {}, "error: --master is for --engine spark"),
])
def test_spark_usage_errors_are_one_line_before_any_jvm(artifacts_dir, version, tmp_path, args, env, message):
    src = tmp_path / "in.csv"
    src.write_text("title,description\nA,B\n")
    cmd = command(artifacts_dir, src, "-o", tmp_path / "o.csv", "--version", version,
                  *(["--engine", "spark"] if "--engine" not in args else []), *args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **cli_env(artifacts_dir), **env})
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "o.csv").exists()


def test_without_pyspark_the_spark_engine_says_how_to_install_it(artifacts_dir, version, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("title,description\nA,B\n")
    hide = "import sys; sys.modules['pyspark'] = None; from tagifai_api.cli import main; main()"
    cmd = [sys.executable, "-c", hide, *command(artifacts_dir, src, "-o", tmp_path / "o.csv", "--version", version,
                                                "--engine", "spark")[3:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **cli_env(artifacts_dir)})
    assert proc.returncode == 2
    assert proc.stderr == ("error: --engine spark needs PySpark, which is not installed: "
                           "pip install -r requirements-spark.txt\n")


@pytest.mark.integration
def test_an_executor_refuses_a_model_file_the_driver_did_not_verify(spark, artifacts_dir, version, tmp_path):
    """A version on shared storage that changes after the driver verified it: the executor's load
    fails on the sha256, and the failed job is one line naming that error."""
    import shutil

    from tagifai_api.scoring import spark as spark_scoring
    from tagifai_api.scoring import spark_job
    from tagifai_api.scoring.chunks import Columns

    shutil.copytree(artifacts_dir / version, tmp_path / version)
    ref = spark_scoring.model_ref(spark, tmp_path, version, ship=False)
    with open(tmp_path / version / "model.npz", "ab") as fh:
        fh.write(b"\0")
    config = spark_scoring.scorer_config(ref, Columns(text=(0,), id=None, names=("text",)), max_text_length=MAX_TEXT,
                                         id_type="int64")
    df = spark.createDataFrame([("Object detection", 1)], "text string, _row long")
    with pytest.raises(Exception) as failed:
        spark_scoring.score_frame(df, ref, config).collect()
    assert spark_job.reason(failed.value) == (
        f"tagifai_api.ml.artifacts.ArtifactError: {tmp_path / version}: model.npz does not match its sha256 in "
        "manifest.json; it was altered or damaged")
