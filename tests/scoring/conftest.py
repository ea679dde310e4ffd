"""Running ``python -m tagifai_api score`` as users do: a real process, real files and signals."""

from __future__ import annotations

import os
import subprocess

import pytest

from tagifai_api import settings
from tests.helpers import ROOT, cli_env, command


@pytest.fixture
def score(artifacts_dir):
    """Run the command; returns the finished process (text stdout and stderr)."""

    def run(*args, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(command(artifacts_dir, *args), input=input, capture_output=True,
                              timeout=timeout, cwd=ROOT, env={**os.environ, **cli_env(artifacts_dir)})
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    return run


@pytest.fixture(scope="session")
def dataset_csv() -> bytes:
    """The shipped dataset as bytes (header + 764 records, some spanning several lines)."""
    return settings.DATA_FILE.read_bytes()
