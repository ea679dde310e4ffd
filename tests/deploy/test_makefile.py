"""The Makefile: which Python builds .venv, and what `make serve` installs compared with `make test`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def fake_python(bindir: Path, name: str, version: tuple[int, int]) -> None:
    """An interpreter called ``name`` whose answer to the Makefile's version check is that of ``version``."""
    script = bindir / name
    script.write_text(f"#!/bin/sh\nexit {int(version < (3, 11))}\n")
    script.chmod(0o755)


def picked(bindir: Path, **env: str) -> str:
    """The PYTHON the Makefile settles on with ``bindir`` first on PATH."""
    environ = {**os.environ, "PATH": f"{bindir}{os.pathsep}/usr/bin:/bin", **env}
    environ.pop("PYTHON", None) if "PYTHON" not in env else None
    out = subprocess.run([MAKE, "--no-print-directory", "-C", str(ROOT), "--eval", 'which-python: ; @echo "$(PYTHON)"',
                          "which-python"], env=environ, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_first_python_at_least_3_11_is_picked(tmp_path):
    fake_python(tmp_path, "python3.13", (3, 10))  # too old despite its name: skipped
    fake_python(tmp_path, "python3.12", (3, 12))
    assert picked(tmp_path) == "python3.12"
    fake_python(tmp_path, "python3.13", (3, 13))
    assert picked(tmp_path) == "python3.13"
    assert picked(tmp_path, PYTHON="/opt/custom/python") == "/opt/custom/python"


def test_serve_installs_runtime_requirements_only(tmp_path):
    """`make -n` on a fresh checkout: serve installs requirements.txt, test adds requirements-dev.txt and
    requirements-spark.txt (PySpark is for those who score at scale)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt", "requirements-spark.txt"):
        shutil.copy(ROOT / name, checkout / name)

    def plan(target: str) -> str:
        return subprocess.run([MAKE, "-n", "-C", str(checkout), target], capture_output=True, text=True,
                              check=True).stdout

    serve = plan("serve")
    assert "-m venv .venv" in serve and "-r requirements.txt" in serve
    assert "requirements-dev.txt" not in serve and "requirements-spark.txt" not in serve
    test = plan("test")
    assert "-r requirements.txt" in test and "-r requirements-dev.txt" in test and "-r requirements-spark.txt" in test
