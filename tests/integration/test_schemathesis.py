"""The OpenAPI document against the running service: schemathesis, every check, every phase.

A finding of any kind fails the test: a schema-valid request refused, an invalid one accepted,
a 5xx, an answer the document does not describe. The run is seeded and bounded in examples, so it
is repeatable and takes seconds, not minutes.
"""

from __future__ import annotations

import subprocess

import pytest
import requests

from tests.integration.servers import VENV_BIN, gunicorn

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
    exercised, and schemathesis's ignored_auth check sends each secured one without the key too."""
    from tagifai_api.auth.keys import KeyStore

    keys_file = tmp_path / "api_keys.json"
    key = KeyStore(keys_file).create("schemathesis", "admin")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_API_KEYS_FILE": str(keys_file)}
    with gunicorn(artifacts_dir, workers=2, env=env) as server:
        result = run_schemathesis(server.url, tmp_path, {"Authorization": f"Bearer {key}"})
        still_ready = requests.get(f"{server.url}/health/ready", timeout=5).status_code
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    assert "No issues found" in result.stdout, summary
    # every operation the document lists was exercised
    assert "Tested: " in result.stdout and "Selected: " in result.stdout
    selected = result.stdout.split("Selected: ")[1].split()[0]  # "7/7"
    tested = result.stdout.split("Tested: ")[1].split()[0]
    assert selected.split("/")[0] == selected.split("/")[1] == tested, summary
    assert still_ready == 200
