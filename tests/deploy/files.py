"""Reading the deployment files without the tools that run them (no Docker engine, no cluster)."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/RUN/HEALTHCHECK, or None for shell form."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether a path (or a folder above it) is left out of the build context; ``!`` re-includes."""
    parts = Path(relative).parts
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern[3:] if pattern.startswith("**/") else pattern
        for i in range(1, len(parts) + 1):
            candidates = ["/".join(parts[:i]), parts[i - 1]]
            if any(fnmatch.fnmatch(c, pattern) for c in candidates):
                ignored = not negate
                break
    return ignored


def gunicorn_default(name: str) -> int:
    """The default of a Gunicorn setting in gunicorn.conf.py, read without executing the file.

    Executing it would export PROMETHEUS_MULTIPROC_DIR into the test process.
    """
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "_env_int":
                return ast.literal_eval(value.args[1])
            return ast.literal_eval(value)
    raise KeyError(name)


def nginx_size(value: str) -> int:
    """nginx's size syntax (8m, 512k, 1024) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[match[2]]
