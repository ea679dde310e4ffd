"""The README is part of the interface: its tables match the code, and its curl examples really work."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess

import pytest

from tagifai_api import settings
from tagifai_api.serving.predlog import text_hash
from tagifai_api.store.database import LOG_COLUMNS
from tests import helpers

README = (helpers.ROOT / "README.md").read_text(encoding="utf-8")
GUNICORN_CONF = (helpers.ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")


def section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1)


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```sh", 1)[1].split("```", 1)[0]
    assert "make serve" in first_block and "make test" in first_block


def test_settings_table_lists_every_setting_with_its_default_and_meaning():
    rows = table_rows(section("settings"))
    assert set(rows) == {settings.ENV_PREFIX + key for key in settings.SETTINGS}
    for key, (default, meaning) in settings.SETTINGS.items():
        shown, described = rows[settings.ENV_PREFIX + key]
        if key not in {"ARTIFACTS_DIR", "API_KEYS_FILE", "DATABASE_URL", "RETRAIN_DATA"}:  # paths on each machine
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert shown == f"`{expected}`", key
        assert described == meaning, key


def test_gunicorn_table_lists_every_variable_gunicorn_conf_reads():
    read = set(re.findall(r"""_env_(?:int|str)\(\s*["'](\w+)["']""", GUNICORN_CONF))
    # not a variable it only sets (os.environ["X"] = ...): that is no knob of Gunicorn's
    read |= set(re.findall(r"""os\.environ(?:\.get|\.setdefault)?[\[(]\s*["'](\w+)["'](?!\]\s*=[^=])""", GUNICORN_CONF))
    read -= {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TAGIFAI_LOG_LEVEL"}
    assert "GUNICORN_THREADS" in read and "WEB_CONCURRENCY" in read
    assert set(table_rows(section("gunicorn-settings"))) == read


def examples(name: str = "curl-examples") -> list[tuple[str, int | str | None]]:
    """(command, expected status, or "text" for a route outside the envelope, or None for a shell
    step such as creating a key) for each command of a section's sh block."""
    block = section(name).split("```sh", 1)[1].split("```", 1)[0]
    out, expected, command = [], None, ""
    for line in block.splitlines():
        status = re.match(r"#\s*->\s*(\d{3})( text)?", line)
        if status:
            expected = "text" if status.group(2) else int(status.group(1))
        elif line.startswith("curl ") or command:
            command += line + "\n"
            if not line.endswith("\\") and command.count("'") % 2 == 0:  # the command is complete
                out.append((command, expected))
                command = ""
        elif line.strip() and not line.startswith("#"):
            out.append((line + "\n", None))
    return out


def curl_examples() -> list[tuple[str, int | str]]:
    return [(c, e) for c, e in examples() if c.startswith("curl ")]


def test_every_route_has_a_curl_example():
    paths = {p for c, _ in curl_examples() for p in re.findall(r"localhost:8000(/[\w/.-]*)", c)}
    routes = {"/", "/performance", "/args", "/args/threshold", "/predict", "/health/live", "/health/ready",
              "/openapi.json", "/metrics", "/docs", "/demo"}
    assert routes <= paths, routes - paths


@pytest.mark.integration
def test_curl_examples_work_verbatim_against_gunicorn(artifacts_dir):
    helpers.require_binary("curl")
    examples = curl_examples()
    assert len(examples) >= 10
    with helpers.gunicorn(artifacts_dir) as server:
        for command, expected in examples:
            # the only change: the address of this test's server
            run = command.replace("http://localhost:8000", server.url)
            out = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, (command, out.stderr)
            if expected == "text":  # the example filters the page; it must find what it looks for
                assert out.stdout.strip(), command
                continue
            body = json.loads(out.stdout)
            if "/openapi.json" in command:
                assert body["openapi"].startswith("3.")
                continue
            assert body["status-code"] == expected, (command, body)
            assert body["url"].startswith(server.url)
            if "/predict" in command and expected == 200:
                tags = [p["predicted_tag"] for p in body["data"]["predictions"]]
                assert tags == ["natural-language-processing", "computer-vision"]
                if "X-Request-ID" in command:
                    assert body["request-id"] == "readme-example-1"
                explained = '"explain": true' in command
                for p in body["data"]["predictions"]:
                    assert ("explanation" in p) is explained
                    if explained:
                        e = p["explanation"]
                        assert e["tag"] == p["predicted_tag"]
                        assert abs(e["intercept"] + sum(w["contribution"] for w in e["words"]) - e["score"]) < 1e-9
            if expected == 422:
                assert body["data"]["errors"]["texts"]["0"]["text"], body


def run_as_one_script(steps, url: str, env: dict, tmp_path, cwd=helpers.ROOT) -> tuple[subprocess.CompletedProcess,
                                                                                           list]:
    """Run a README block as one bash script (in ``cwd``) against ``url``; each checked curl's output goes to a file.

    Returns the finished process and ``(index, command, expected status)`` for every checked step,
    whose body is in ``tmp_path / f"out{index}.json"``.
    """
    script, checks = ["set -euo pipefail"], []
    for i, (command, expected) in enumerate(steps):
        run = command.replace("http://localhost:8000", url)
        if expected is None:
            script.append(run)
        else:
            script.append(f"{{ {run}}} > {tmp_path / f'out{i}.json'}")
            checks.append((i, command, expected))
    out = subprocess.run(["bash", "-c", "".join(line if line.endswith("\n") else line + "\n" for line in script)],
                         cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    return out, checks


@pytest.mark.integration
def test_access_control_examples_work_verbatim_against_gunicorn(artifacts_dir, tmp_path):
    """The block runs as one shell script (it sets $KEY), each curl's output kept for checking."""
    helpers.require_binary("curl")
    shutil.copy(artifacts_dir / "state.db", tmp_path / "state.db")  # the keys it creates stay this test's
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    steps = examples("auth-examples")
    assert sum(expected is not None for _, expected in steps) >= 6
    with helpers.gunicorn(artifacts_dir, env=env) as server:
        out, checks = run_as_one_script(steps, server.url, env, tmp_path)
        assert out.returncode == 0, out.stderr
    assert "reader" in out.stdout  # keys list
    for i, command, expected in checks:
        body = json.loads((tmp_path / f"out{i}.json").read_text())
        assert body["status-code"] == expected, (command, body)
        assert body["url"].startswith(server.url)
        if "-X DELETE" in command and expected == 401:  # the session's store has no admin key
            assert "none exists yet" in body["message"] and "keys create" in body["message"], body


@pytest.mark.integration
def test_token_examples_work_verbatim_against_gunicorn(artifacts_dir, tmp_path):
    """Against Gunicorn accepting the tokens of a provider started on loopback; ``$TOKEN`` is one it
    signed, holding the ``tagifai:predict`` role."""
    helpers.require_binary("curl")
    provider = helpers.IdentityProvider()
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_OIDC_ISSUER": provider.issuer, "TAGIFAI_OIDC_AUDIENCE": provider.audience}
    try:
        with helpers.gunicorn(artifacts_dir, workers=1, env=env) as server:
            out, checks = run_as_one_script(examples("token-examples"), server.url,
                                            {"TOKEN": provider.token(sub="batch-job")}, tmp_path)
            assert out.returncode == 0, out.stderr
    finally:
        provider.stop()
    assert [expected for _, _, expected in checks] == [200, 403, 401]
    for i, command, expected in checks:
        body = json.loads((tmp_path / f"out{i}.json").read_text())
        assert body["status-code"] == expected, (command, body)
        assert body["url"].startswith(server.url)


@pytest.mark.integration
def test_tls_examples_work_verbatim_against_nginx(artifacts_dir, tmp_path):
    """The certificate the block makes, in tagifai-tls.conf, in front of Gunicorn; the block then runs
    as one script with the ports of this test's nginx for 443 and 80."""
    helpers.require_binary("curl")
    helpers.require_binary("openssl")
    (make, _), *steps = examples("tls-examples")
    assert make.startswith("openssl req -x509 ")
    made = subprocess.run(["bash", "-c", make], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    certificate = (tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    with helpers.gunicorn(artifacts_dir, workers=1, env={"TAGIFAI_PROXY_COUNT": "1"}) as api, \
            helpers.nginx(tmp_path / "nginx", f"127.0.0.1:{api.port}", tls=certificate) as proxy:
        tls_port = proxy.tls_url.rsplit(":", 1)[1]
        here = [("set +o pipefail\n", None)]  # a refused handshake fails openssl; the grep after it says so
        here += [(c.replace("https://localhost/", f"{proxy.tls_url}/").replace("http://localhost/", f"{proxy.url}/")
                 .replace("-connect localhost:443", f"-connect 127.0.0.1:{tls_port}"), e) for c, e in steps]
        out, checks = run_as_one_script(here, proxy.tls_url, {}, tmp_path, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    assert [expected for _, _, expected in checks] == [200, "text", "text"]
    predicted, redirect, headers = ((tmp_path / f"out{i}.json").read_text() for i, _, _ in checks)
    body = json.loads(predicted)
    assert body["status-code"] == 200 and body["url"] == f"{proxy.tls_url}/predict"
    assert [p["predicted_tag"] for p in body["data"]["predictions"]] == ["natural-language-processing"]
    assert redirect == "301 https://127.0.0.1/predict\n"
    assert sorted(headers.lower().split()) == sorted(["strict-transport-security:", "max-age=63072000",
                                                      "x-content-type-options:", "nosniff"])
    assert [line for line in out.stdout.splitlines() if "Protocol version" in line] == [
        "Protocol version: TLSv1.2", "Protocol version: TLSv1.3"]
    assert sum("alert protocol version" in line for line in out.stdout.splitlines()) == 2


@pytest.mark.integration
def test_registry_examples_work_verbatim_against_gunicorn(registry_root, tmp_path):
    """The block runs as one shell script (it sets $ADMIN and $NEW), each curl's output kept for checking."""
    helpers.require_binary("curl")
    root, first, second = registry_root
    env = {"TAGIFAI_DATABASE_URL": helpers.state_url(root)}
    steps = examples("registry-examples")
    paths = {p for c, _ in steps for p in re.findall(r"localhost:8000(/[\w/.-]*)", c)}
    assert {"/models", "/models/default", "/models/default/rollback", "/models/shadow", "/predict", "/performance",
            "/args", "/models/history"} <= paths
    with helpers.gunicorn(root, env=env) as server:
        out, checks = run_as_one_script(steps, server.url, env, tmp_path)
        assert out.returncode == 0, out.stderr
    assert len(checks) >= 12
    bodies = []
    for i, command, expected in checks:
        body = json.loads((tmp_path / f"out{i}.json").read_text())
        assert body["status-code"] == expected, (command, body)
        assert body["url"].startswith(server.url)
        bodies.append((command, body))
    answered = [b["data"]["model_version"] for c, b in bodies if "predict?version" in c]
    assert answered == [second]  # $NEW is the newest version
    switched = [b["data"] for c, b in bodies if "-X PUT" in c and "/models/default" in c and "Bearer" in c]
    assert switched == [{"previous": first, "default": second}]
    listings = [b["data"] for c, b in bodies if c == "curl -s http://localhost:8000/models\n"]
    assert [d["shadow"] for d in listings] == [None, second]
    assert listings[1]["shadow_agreement"] is not None
    history = [b["data"] for c, b in bodies if "/models/history" in c]
    assert [(e["action"], e["reason"]) for e in history[0]["changes"][:2]] == [
        ("rollback", "back to the one we know"), ("set_default", "better F1")]
    assert {e["key_name"] for e in history[0]["changes"][:2]} == {"ops"}
    assert helpers.open_registry(root).pointers()[0] == first


@pytest.mark.integration
def test_feedback_examples_work_verbatim_against_gunicorn(artifacts_dir, tmp_path):
    """The block runs as one shell script (it sets $KEY) in a folder of its own, where its exports land;
    each curl's output kept for checking."""
    helpers.require_binary("curl")
    shutil.copy(artifacts_dir / "state.db", tmp_path / "state.db")
    (tmp_path / ".venv").symlink_to(helpers.ROOT / ".venv")  # the block's .venv/bin/python
    env = {"TAGIFAI_PREDICTION_LOG": "texts", "TAGIFAI_DATABASE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    steps = examples("feedback-examples")
    with helpers.gunicorn(artifacts_dir, env=env) as server:
        out, checks = run_as_one_script(steps, server.url, {**env, "PYTHONPATH": str(helpers.ROOT)}, tmp_path,
                                        cwd=tmp_path)
        assert out.returncode == 0, out.stderr
    bodies = []
    for i, command, expected in checks:
        body = json.loads((tmp_path / f"out{i}.json").read_text())
        assert body["status-code"] == expected, (command, body)
        bodies.append((command, body))
    version = helpers.default_of(artifacts_dir)
    labels = json.loads((artifacts_dir / version / "labels.json").read_text())
    text = "Serving models with Kubernetes and a feature store."

    first, again = (b["data"] for c, b in bodies if "/feedback" in c and b["status-code"] == 200)
    assert first["recorded"] == 2 and [i["status"] for i in first["items"]] == ["created", "created"]
    predicted = first["items"][0]["predicted"]
    assert first["items"][0]["model_version"] == version and first["items"][0]["text_kept"] is True
    assert again["recorded"] == 1 and [i["status"] for i in again["items"]] == ["updated"]
    assert again["items"][0]["predicted"] == predicted
    refused = next(b for _, b in bodies if b["status-code"] == 422)
    wanted = f"Must be one of the classes of {version}: {', '.join(labels)}."
    assert refused["data"]["errors"] == {"feedback": {"0": {"tag": [wanted]}}}

    # the second correction replaced the first: one correction, saying "other"
    quality = next(b["data"] for c, b in bodies if "/quality?days=7" in c)
    right = int(predicted == "other")
    assert quality["model_version"] == version
    assert (quality["all"]["count"], quality["all"]["correct"]) == (1, right)
    assert (quality["recent"]["days"], quality["recent"]["count"], quality["recent"]["correct"]) == (7, 1, right)
    models = next(b["data"] for c, b in bodies if c == "curl -s http://localhost:8000/models\n")
    live = {m["version"]: m["live"] for m in models["models"]}
    assert live[version] == {"feedback": 1, "accuracy": quality["all"]["accuracy"]}

    logged = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    ours = [r for r in logged if r["request_id"] == "demo-1"]
    assert [list(r) for r in ours] == [list(LOG_COLUMNS)]
    assert (ours[0]["position"], ours[0]["model_version"], ours[0]["predicted"], ours[0]["text"]) == (
        0, version, predicted, text)
    assert ours[0]["text_hash"] == text_hash(text)
    with open(tmp_path / "feedback.csv", encoding="utf-8", newline="") as exported:
        reader = csv.DictReader(exported)
        rows = {(r["text"], r["tag"], r["source"]) for r in reader}
    assert reader.fieldnames == ["text", "tag", "at", "source"]
    assert rows == {(text, "other", "prediction"), ("Pruning CNNs for edge devices.", "computer-vision", "text")}


@pytest.mark.integration
def test_retrain_examples_work_verbatim_against_gunicorn(loop, corrections, send, tmp_path):
    """The block runs as one shell script (it sets $ADMIN, $JOB and $CANDIDATE) against a service whose
    store holds 400 corrections, so the candidate passes the gate and becomes the shadow."""
    helpers.require_binary("curl")
    root, default, registry = loop
    send(registry.store, corrections)
    env = {"TAGIFAI_DATABASE_URL": helpers.state_url(root), "TAGIFAI_ARTIFACTS_DIR": str(root),
           "TAGIFAI_RETRAIN_DATA": str(root / "small.csv"), "TAGIFAI_RETRAIN_NICE": "0"}  # no wait behind others' work
    steps = examples("retrain-examples")
    paths = {p for c, _ in steps for p in re.findall(r"localhost:8000(/[\w/.-]*)", c)}
    assert {"/models/retrain", "/jobs/", "/models/default/promote-shadow", "/models/history"} <= paths
    with helpers.gunicorn(root, env=env) as server:
        out, checks = run_as_one_script(steps, server.url, env, tmp_path)
        assert out.returncode == 0, out.stderr
    bodies = []
    for i, command, expected in checks:
        body = json.loads((tmp_path / f"out{i}.json").read_text())
        assert body["status-code"] == expected, (command, body)
        bodies.append((command, body))
    started, refused, job, candidate, kept, history = (b for _, b in bodies)
    assert refused["data"]["job"]["id"] == started["data"]["job"]["id"] == job["data"]["job"]["id"]
    result = job["data"]["job"]["result"]
    assert result["decision"] == "shadowed" and candidate["data"]["lineage"]["parent"] == default
    assert kept["data"]["gate"]["failed"] == ["min_shadow_texts"]
    assert [c["action"] for c in history["data"]["changes"]] == ["kept", "kept", "shadowed", "trained"]
    assert registry.pointers() == (default, result["candidate"])


@pytest.mark.integration
def test_spark_example_works_verbatim(artifacts_dir, tmp_path):
    """The Spark block, run as it is in a folder with a projects.csv of three rows, one of them blank:
    a Parquet directory of the two good rows, the blank one in the errors directory, exit 3, and on
    standard error only the summary (and the JVM's own notice of its incubator module)."""
    import sys

    helpers.require_binary("java")
    helpers.require_module("pyspark", "requirements-spark.txt")
    import pyarrow.parquet as pq

    block = section("spark-examples").split("```sh\n", 1)[1].split("```", 1)[0]
    (tmp_path / "projects.csv").write_text("id,title,description\nr1,Image segmentation,with U-Net\nr2,,\n"
                                           "r3,Kubernetes model serving,monitoring\n", encoding="utf-8")
    env = {**os.environ, **helpers.cli_env(artifacts_dir), "TAGIFAI_ARTIFACTS_DIR": str(artifacts_dir),
           "PYTHONPATH": str(helpers.ROOT),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Using incubator modules")]
    assert len(lines) == 1 and lines[0].startswith("scored 2 of 3 rows, 1 rejected (see tags.parquet.errors.jsonl)"), \
        proc.stderr
    table = pq.read_table(tmp_path / "tags.parquet")
    assert sorted(table.column("id").to_pylist()) == ["r1", "r3"]
    assert table.column("model_version").to_pylist() == [helpers.default_of(artifacts_dir)] * 2
    errors = [json.loads(line) for path in sorted((tmp_path / "tags.parquet.errors.jsonl").glob("part-*"))
              for line in path.read_text().splitlines()]
    assert errors == [{"line": None, "row": 2, "id": "r2", "reason": "blank text"}]
    again = subprocess.run(["bash", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and again.stderr == "error: tags.parquet exists; use --force to overwrite\n"
