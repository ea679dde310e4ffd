"""Running ``python -m tagifai_api score`` as users do: a real process, real files and signals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tagifai_api import settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def score(artifacts_dir):
    """Run the command; returns the finished process (text stdout and stderr)."""

    def run(*args, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(command(artifacts_dir, *args), input=input, capture_output=True,
                              timeout=timeout, cwd=ROOT)
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    return run


def command(artifacts_dir: Path, *args) -> list[str]:
    """The argv of a ``score`` run against the test model."""
    return [sys.executable, "-m", "tagifai_api", "--artifacts", str(artifacts_dir), "score", *map(str, args)]


@pytest.fixture(scope="session")
def dataset_csv() -> bytes:
    """The shipped dataset as bytes (header + 764 records, some spanning several lines)."""
    return settings.DATA_FILE.read_bytes()


def repeated(dataset_csv: bytes, times: int) -> bytes:
    """The dataset's records ``times`` over, under one header."""
    header, body = dataset_csv.split(b"\n", 1)
    if not body.endswith(b"\n"):
        body += b"\n"
    return header + b"\n" + body * times
