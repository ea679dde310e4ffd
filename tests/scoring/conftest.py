"""Running ``python -m tagifai_api score`` as users do: a real process, real files and signals."""

from __future__ import annotations

import os
import subprocess

import pytest

from tagifai_api import settings
from tests.helpers import ROOT, cli_env, command, require_binary, require_module


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


@pytest.fixture(scope="session")
def spark():
    """One local Spark session (2 cores) for every Spark test: a JVM costs seconds to start. Without
    Java or PySpark the tests skip locally and fail in CI."""
    require_binary("java")
    require_module("pyspark", "requirements-spark.txt")
    from tagifai_api.scoring import spark_job

    session = spark_job.session("local[2]", conf={"spark.sql.shuffle.partitions": "2",
                                                  "spark.default.parallelism": "2"})
    yield session
    session.stop()
