"""``score``: formats, compression, standard input, order across workers, bad rows, usage errors,
progress reporting, and the same answers as ``/predict``."""

from __future__ import annotations

import csv
import fcntl
import gzip
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import orjson
import pytest

from tagifai_api import settings
from tests.helpers import ROOT, cli_env, command, repeated


def read_csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def read_jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def test_csv_and_json_lines_plain_gzip_and_stdin_give_the_same_predictions(score, dataset_csv, tmp_path):
    """Every input form and output form carries the same rows; gzip output is a valid gzip file."""
    src = tmp_path / "in.csv"
    src.write_bytes(dataset_csv)
    (tmp_path / "in.csv.gz").write_bytes(gzip.compress(dataset_csv))
    rows = read_csv(dataset_csv)
    jsonl = b"".join(orjson.dumps({"title": r["title"], "description": r["description"], "ref": r["id"]}) + b"\n"
                     for r in rows)
    (tmp_path / "in.jsonl").write_bytes(jsonl)

    runs = {
        "csv": score(src, "-o", tmp_path / "a.csv", "--id-column", "id", "--quiet"),
        "csv.gz in, csv.gz out": score(tmp_path / "in.csv.gz", "-o", tmp_path / "b.csv.gz", "--id-column", "id"),
        "stdin gzip": score("-", "--format", "csv", "-o", tmp_path / "c.csv", "--id-column", "id",
                            input=gzip.compress(dataset_csv)),
        "jsonl": score(tmp_path / "in.jsonl", "-o", tmp_path / "d.jsonl", "--id-column", "ref"),
    }
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stderr)
    assert runs["csv"].stderr == ""  # --quiet
    assert f"scored {len(rows)} of {len(rows)} rows" in runs["stdin gzip"].stderr

    plain = (tmp_path / "a.csv").read_bytes()
    assert gzip.decompress((tmp_path / "b.csv.gz").read_bytes()) == plain
    assert (tmp_path / "c.csv").read_bytes() == plain
    table = read_csv(plain)
    assert [r["id"] for r in table] == [r["id"] for r in rows]
    classes = [c[len("probability_"):] for c in table[0] if c.startswith("probability_")]
    assert classes == ["computer-vision", "mlops", "natural-language-processing", "other"]
    assert {r["low_confidence"] for r in table} <= {"true", "false"}
    lines = read_jsonl((tmp_path / "d.jsonl").read_bytes())
    assert len(lines) == len(table)
    for row, line in zip(table, lines):
        assert line["id"] == row["id"]
        assert line["predicted_tag"] == row["predicted_tag"]
        assert line["model_version"] == row["model_version"]
        assert line["confidence"] == float(row["confidence"])
        assert line["probabilities"] == {c: float(row[f"probability_{c}"]) for c in classes}
        assert line["low_confidence"] == (row["low_confidence"] == "true")


def test_several_workers_keep_input_order_byte_for_byte(score, dataset_csv, tmp_path):
    """Small chunks over 3 workers finish out of order; the output is still in input order."""
    src = tmp_path / "in.csv"
    src.write_bytes(repeated(dataset_csv, 3))
    one = score(src, "-o", tmp_path / "one.jsonl", "--workers", "1", "--chunk-size", "37")
    three = score(src, "-o", tmp_path / "three.jsonl", "--workers", "3", "--chunk-size", "37")
    assert one.returncode == three.returncode == 0, three.stderr
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "three.jsonl").read_bytes()
    ids = [line["id"] for line in read_jsonl((tmp_path / "three.jsonl").read_bytes())]
    assert ids == list(range(1, 3 * 764 + 1))  # no --id-column: the row number


def test_score_agrees_with_predict_on_the_whole_dataset(score, client, dataset_csv, tmp_path):
    """Row by row: the same tag and low-confidence flag, probabilities within 1e-9."""
    src = tmp_path / "in.csv"
    src.write_bytes(dataset_csv)
    proc = score(src, "-o", tmp_path / "out.jsonl", "--id-column", "id", "--workers", "2", "--chunk-size", "100")
    assert proc.returncode == 0, proc.stderr
    scored = read_jsonl((tmp_path / "out.jsonl").read_bytes())
    rows = read_csv(dataset_csv)
    assert len(scored) == len(rows)
    texts = [f"{r['title']} {r['description']}".strip() for r in rows]
    served = []
    for start in range(0, len(texts), 100):
        resp = client.post("/predict", json={"texts": [{"text": t} for t in texts[start:start + 100]]})
        assert resp.status_code == 200
        served.extend(resp.get_json()["data"]["predictions"])
        version = resp.get_json()["data"]["model_version"]
    for row, mine, theirs in zip(rows, scored, served):
        assert mine["id"] == row["id"]
        assert mine["model_version"] == version
        assert mine["predicted_tag"] == theirs["predicted_tag"], row["id"]
        assert mine["low_confidence"] == theirs["low_confidence"], row["id"]
        assert mine["confidence"] == pytest.approx(theirs["confidence"], abs=1e-9)
        assert mine["probabilities"].keys() == theirs["probabilities"].keys()
        for tag, p in theirs["probabilities"].items():
            assert mine["probabilities"][tag] == pytest.approx(p, abs=1e-9), (row["id"], tag)


def test_bad_rows_are_written_with_line_and_reason_and_exit_3(score, tmp_path):
    """A bad row never stops the job; the good ones around it are scored, in order."""
    long_text = "x " * (settings.DEFAULTS["MAX_TEXT_LENGTH"] // 2 + 1)
    src = tmp_path / "in.csv"
    src.write_text(
        "id,title,description\n"                        # line 1
        "a,Image segmentation,with U-Net\n"             # 2: good
        "b,,\n"                                         # 3: blank text
        "c,   ,  \n"                                    # 4: blank text
        f"d,{long_text},\n"                             # 5: too long
        "e,only two fields\n"                           # 6: wrong width
        'f,"broken"quote,x\n'                           # 7: not valid CSV
        ',Question answering,with BERT\n'               # 8: no id
        'g,"A title over\ntwo lines",and a description\n'  # 9-10: good
        "\n"                                            # 11: blank line, not a row
        "h,Kubernetes model serving,monitoring\n",      # 12: good
        encoding="utf-8")
    proc = score(src, "-o", tmp_path / "out.csv", "--id-column", "id")
    assert proc.returncode == 3, proc.stderr
    out = read_csv((tmp_path / "out.csv").read_bytes())
    assert [r["id"] for r in out] == ["a", "g", "h"]
    errors = read_jsonl((tmp_path / "out.csv.errors.jsonl").read_bytes())
    by_line = {e["line"]: e for e in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert by_line[3]["reason"] == "blank text" and by_line[3]["id"] == "b" and by_line[3]["row"] == 2
    assert by_line[5]["reason"].startswith(f"text longer than {settings.DEFAULTS['MAX_TEXT_LENGTH']} characters")
    assert by_line[6]["reason"] == "not valid CSV: expected 3 fields, found 2"
    assert by_line[7]["reason"].startswith("not valid CSV:")
    assert by_line[8]["reason"] == "missing id (column 'id')"
    assert "3 of 9 rows, 6 rejected" in proc.stderr
    assert not (tmp_path / "out.csv.progress").exists()


def test_bad_json_lines_and_invalid_utf8(score, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'{"text": "Object detection with YOLO"}\n'   # 1: good
        b'{"text": "unterminated\n'                    # 2: not JSON
        b'[1, 2]\n'                                    # 3: not an object
        b'{"other": "no text"}\n'                      # 4: missing text
        b'{"text": 42}\n'                              # 5: not a string
        b'{"text": "caf\xe9 au lait"}\n'               # 6: not UTF-8
        b'\n'
        b'{"text": "Named entity recognition"}\n')     # 8: good
    proc = score(src, "-o", tmp_path / "out.jsonl", "--text-column", "text")
    assert proc.returncode == 3, proc.stderr
    assert [r["id"] for r in read_jsonl((tmp_path / "out.jsonl").read_bytes())] == [1, 7]
    reasons = {e["line"]: e["reason"] for e in read_jsonl((tmp_path / "out.jsonl.errors.jsonl").read_bytes())}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert reasons[2].startswith("not valid JSON")
    assert reasons[3] == "not a JSON object but list"
    assert reasons[4] == "missing text (column 'text')"
    assert reasons[5] == "column 'text' is not a string"
    assert reasons[6].startswith("not valid JSON")


@pytest.mark.parametrize(("args", "message"), [
    (["missing.csv", "-o", "{tmp}/o.csv"], "error: cannot read missing.csv: No such file or directory"),
    (["{src}", "-o", "{tmp}/o.csv", "--text-column", "body"], "error: unknown column 'body'"),
    (["{src}", "-o", "{tmp}/o.csv", "--id-column", "ref"], "error: unknown column 'ref'"),
    (["{src}", "-o", "{tmp}/o.csv", "--version", "v1"], "error: no model version 'v1'"),
    (["{src}", "-o", "{tmp}/o.txt"], "error: cannot tell the format of output"),
    (["-", "-o", "{tmp}/o.csv"], "error: reading standard input needs --format"),
    (["{src}", "-o", "{tmp}/o.csv", "--workers", "0"], "error: Invalid value for '--workers'"),
    (["{src}", "-o", "{tmp}/o.csv", "--text-column", "title", "--title-column", "title"],
     "error: --text-column replaces"),
    (["{src}", "-o", "{src}"], "error: the output would overwrite the input"),
])
def test_usage_errors_are_one_line_and_exit_2(score, tmp_path, args, message):
    src = tmp_path / "in.csv"
    src.write_text("title,description\nA,B\n")
    proc = score(*[a.format(tmp=tmp_path, src=src) for a in args], input=b"")
    assert proc.returncode == 2
    assert proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.csv").exists()


def test_existing_output_is_refused_without_force_or_resume(score, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("title,description\nImage classification,CNN\n")
    out = tmp_path / "o.csv"
    out.write_text("keep me")
    refused = score(src, "-o", out)
    assert refused.returncode == 2 and "exists; use --resume" in refused.stderr
    assert out.read_text() == "keep me"
    nothing = score(src, "-o", out, "--resume")
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stderr
    failed = score(src, "-o", out, "--force", "--text-column", "body")
    assert failed.returncode == 2 and out.read_text() == "keep me"  # a usage error removes nothing
    forced = score(src, "-o", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert out.read_text().startswith("id,predicted_tag,")


def test_progress_lines_when_stderr_is_not_a_terminal(score, dataset_csv, tmp_path):
    src = tmp_path / "in.csv"
    src.write_bytes(repeated(dataset_csv, 40))  # about a second of work even on an idle machine
    proc = score(src, "-o", tmp_path / "o.csv", "--workers", "1", "--chunk-size", "50", "--progress-interval", "0.1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any("rows/s" in line and "of the input" in line for line in lines[:-1]), proc.stderr
    assert lines[-1].startswith(f"scored {40 * 764:,} of {40 * 764:,} rows")


def test_progress_bar_on_a_terminal(artifacts_dir, dataset_csv, tmp_path):
    """On a terminal: a bar with rows, rows/s and the remaining time."""
    src = tmp_path / "in.csv"
    src.write_bytes(repeated(dataset_csv, 2))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    try:
        proc = subprocess.run(command(artifacts_dir, src, "-o", tmp_path / "o.csv", "--chunk-size", "100"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, cwd=ROOT,
                              timeout=120, env={**os.environ, **cli_env(artifacts_dir)})
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed
                break
            if not data:
                break
            shown += data
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0
    text = shown.decode("utf-8", "replace")
    assert "100%|" in text and "rows/s" in text and "<00:00]" in text, text


def test_explain_gives_predict_explanations_top_words(score, client, dataset_csv, tmp_path):
    """--explain: /predict's explained predictions, with the explanation's words summed per word
    (case aside) and the largest positive ones listed, largest first."""
    rows = read_csv(dataset_csv)[:40]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"title": r["title"], "description": r["description"]}) + b"\n"
                             for r in rows))
    proc = score(src, "-o", tmp_path / "out.jsonl", "--explain", "--top-words", "3", "--workers", "2",
                 "--chunk-size", "16")
    assert proc.returncode == 0, proc.stderr
    scored = read_jsonl((tmp_path / "out.jsonl").read_bytes())
    texts = [f"{r['title']} {r['description']}".strip() for r in rows]
    resp = client.post("/predict", json={"texts": [{"text": t} for t in texts], "explain": True})
    assert resp.status_code == 200
    for mine, theirs in zip(scored, resp.get_json()["data"]["predictions"], strict=True):
        assert mine["predicted_tag"] == theirs["predicted_tag"]
        for tag, p in theirs["probabilities"].items():
            assert mine["probabilities"][tag] == pytest.approx(p, abs=1e-9)
        explanation = theirs["explanation"]
        assert mine["explained_tag"] == explanation["tag"]
        totals: dict[str, float] = {}
        for w in explanation["words"]:
            if not w["dropped"]:
                totals[w["text"].lower()] = totals.get(w["text"].lower(), 0.0) + w["contribution"]
        best = sorted((v for v in totals.values() if v > 0), reverse=True)[:3]
        listed = mine["top_words"]
        assert [w["contribution"] for w in listed] == pytest.approx(best, abs=1e-9)
        for w in listed:
            assert totals[w["word"].lower()] == pytest.approx(w["contribution"], abs=1e-9)


def test_an_explicit_version_scores_while_the_store_is_down(artifacts_dir, dataset_csv, tmp_path):
    """--version names the version: scoring does not need the state store then."""
    from tests.helpers import default_of

    src = tmp_path / "in.csv"
    src.write_bytes(dataset_csv)
    version = default_of(artifacts_dir)
    down = {**os.environ, **cli_env(artifacts_dir), "TAGIFAI_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    proc = subprocess.run(command(artifacts_dir, src, "-o", tmp_path / "o.csv", "--version", version, "--quiet"),
                          capture_output=True, text=True, timeout=120, cwd=ROOT, env=down)
    assert proc.returncode == 0, proc.stderr
    assert {row["model_version"] for row in read_csv((tmp_path / "o.csv").read_bytes())} == {version}


def test_a_text_column_is_used_when_there_is_no_title_or_description(score, tmp_path):
    """JSON Lines of ``/predict`` items, or a CSV with a ``text`` column, score without flags; an
    input that has a title column still asks for title and description."""
    items = tmp_path / "items.jsonl"
    items.write_text('{"text": "Object detection with YOLO"}\n{"text": "Named entity recognition with BERT"}\n')
    texts = tmp_path / "texts.csv"
    texts.write_text("ref,text\nx,Object detection with YOLO\ny,Named entity recognition with BERT\n")
    both = tmp_path / "both.csv"
    both.write_text("title,text\nA,B\n")
    for src, out in ((items, "items-out.jsonl"), (texts, "texts-out.jsonl")):
        proc = score(src, "-o", tmp_path / out)
        assert proc.returncode == 0, proc.stderr
        assert [r["predicted_tag"] for r in read_jsonl((tmp_path / out).read_bytes())] == [
            "computer-vision", "natural-language-processing"]
    proc = score(both, "-o", tmp_path / "both-out.csv")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown column 'description'"), proc.stderr


def test_parquet_in_and_out(score, dataset_csv, tmp_path):
    """A Parquet input's typed columns are checked as JSON's are (a non-string text is rejected, the
    row has no line); the output is one Parquet file with the CSV output's columns and values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_csv(dataset_csv)
    titles: list = [r["title"] for r in rows]
    titles[2] = None  # a missing title: the description alone is the text
    table = pa.table({"id": [int(r["id"]) for r in rows], "title": titles,
                      "description": [r["description"] for r in rows]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=200)
    bad = pa.table({"title": pa.array([1, 2], pa.int64()), "description": ["x", None]})
    pq.write_table(bad, tmp_path / "bad.parquet")
    proc = score(tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "--id-column", "id", "--chunk-size", "100")
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob(".out.parquet*"))  # the hidden partial file was renamed into place
    src_csv = tmp_path / "in.csv"
    src_csv.write_bytes(dataset_csv)
    proc = score(src_csv, "-o", tmp_path / "out.csv", "--id-column", "id")
    assert proc.returncode == 0, proc.stderr
    written = pq.read_table(tmp_path / "out.parquet")
    assert written.schema.field("id").type == pa.int64()
    expected = read_csv((tmp_path / "out.csv").read_bytes())
    assert written.column_names == list(expected[0])
    for i, (mine, theirs) in enumerate(zip(written.to_pylist(), expected, strict=True)):
        assert str(mine["id"]) == theirs["id"]
        if i == 2:
            continue  # its title is missing from the Parquet input
        assert mine["predicted_tag"] == theirs["predicted_tag"]
        assert mine["low_confidence"] == (theirs["low_confidence"] == "true")
        for column in theirs:
            if column.startswith("probability_") or column == "confidence":
                assert mine[column] == pytest.approx(float(theirs[column]), abs=1e-12)

    proc = score(tmp_path / "bad.parquet", "-o", tmp_path / "bad-out.parquet")
    assert proc.returncode == 3
    assert read_jsonl((tmp_path / "bad-out.parquet.errors.jsonl").read_bytes()) == [
        {"line": None, "row": 1, "id": None, "reason": "column 'title' is not a string"},
        {"line": None, "row": 2, "id": None, "reason": "column 'title' is not a string"}]
    assert pq.read_table(tmp_path / "bad-out.parquet").num_rows == 0

    refused = score(tmp_path / "in.parquet", "-o", tmp_path / "out.parquet", "--resume")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --resume is for CSV and JSON Lines outputs")
    exists = score(tmp_path / "in.parquet", "-o", tmp_path / "out.parquet")
    assert exists.returncode == 2
    assert exists.stderr == f"error: {tmp_path / 'out.parquet'} exists; use --force to overwrite\n"


def test_parquet_without_pyarrow_is_one_line(artifacts_dir, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("title,description\nA,B\n")
    hide = "import sys; sys.modules['pyarrow'] = None; from tagifai_api.cli import main; main()"
    cmd = [sys.executable, "-c", hide, *command(artifacts_dir, src, "-o", tmp_path / "o.parquet")[3:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **cli_env(artifacts_dir)})
    assert proc.returncode == 2
    assert proc.stderr == ("error: Parquet needs pyarrow, which is not installed: "
                           "pip install -r requirements-spark.txt\n")
    assert not (tmp_path / "o.parquet").exists()
