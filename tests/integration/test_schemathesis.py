"""The OpenAPI document against the running service: schemathesis, every check, every phase.

A finding of any kind fails the test: a schema-valid request refused, an invalid one accepted,
a 5xx, an answer the document does not describe. The run is seeded and bounded in examples, so it
is repeatable and takes seconds, not minutes.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import requests

from tests.helpers import VENV_BIN, gunicorn, open_registry

pytestmark = pytest.mark.integration

SEED = 20261127
MAX_EXAMPLES = 100  # per operation and phase: about 1,300 cases in all


def run_schemathesis(url: str, cwd, headers: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``schemathesis run`` over the whole document, its report written to ``cwd``."""
    command = [
        str(VENV_BIN / "schemathesis"), "run", f"{url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "2",
        "--request-timeout", "15", "--suppress-health-check", "too_slow",
        "--report", "junit", "--report-dir", str(cwd),
    ]
    for name, value in (headers or {}).items():
        command += ["--header", f"{name}: {value}"]
    # schemathesis keeps its example database under the working directory: a temporary one
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=110,
                          env={"NO_COLOR": "1", "PATH": str(VENV_BIN), "HOME": str(cwd)})


def test_service_conforms_to_its_openapi_document(artifacts_dir, tmp_path):
    """Every route with an admin key, in the mode where every route needs one: admin routes are
    exercised, and schemathesis's ignored_auth check sends each secured one without the key too.

    The service gets its own copy of the model versions (admin routes may switch what is served), and
    path parameters naming a version get a real one, so routes about a version reach it, not only 404s.
    """
    from tagifai_api.auth.keys import KeyStore

    models = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, models, symlinks=True)  # its store (state.db) too
    registry = open_registry(models)
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.version" = "{registry.default_version()}"\n')
    key = KeyStore(registry.store).create("schemathesis", "admin")
    registry.store.close()
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_RETRAIN_NICE": "0"}  # its retrainings need not wait behind others' work
    with gunicorn(models, workers=2, env=env) as server:
        result = run_schemathesis(server.url, tmp_path, {"Authorization": f"Bearer {key}"})
        still_ready = requests.get(f"{server.url}/health/ready", timeout=5).status_code
    summary = result.stdout[-3000:]
    print(summary)
    # the exit status is non-zero on any failure or error (warnings, such as a route that often
    # answered 404 to generated input, are shown but are not findings)
    assert result.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and generated[1] == generated[2] and int(generated[1]) > 500, summary
    # every operation the document lists was exercised
    selected = re.search(r"Selected: (\d+)/(\d+)", result.stdout)
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert selected and tested and selected[1] == selected[2] == tested[1], summary
    assert still_ready == 200


def test_a_fresh_install_with_no_keys_conforms_too(artifacts_dir, tmp_path):
    """What `make serve` starts on a fresh install: mode admin, no key at all in the store. Every admin
    route answers 401 with WWW-Authenticate to a request without credentials (never 403), so
    schemathesis, every check and every phase, finds nothing."""
    models = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, models, symlinks=True)
    registry = open_registry(models)
    assert registry.store.keys() == []
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.version" = "{registry.default_version()}"\n')
    registry.store.close()
    with gunicorn(models, workers=2, env={"TAGIFAI_AUTH": "admin"}) as server:
        closed = requests.put(f"{server.url}/models/default", json={"version": "x"}, timeout=5)
        result = run_schemathesis(server.url, tmp_path)
    assert closed.status_code == 401 and closed.headers["WWW-Authenticate"].startswith("Bearer")
    assert "none exists yet" in closed.json()["message"]
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and generated[1] == generated[2], summary
