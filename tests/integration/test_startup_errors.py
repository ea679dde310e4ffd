"""Start-up refusals are one line on stderr naming the setting and what would be valid, and a
non-zero exit: from Gunicorn, from `make serve` and from every command-line command."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tagifai_api.cli import cli
from tests.helpers import ROOT, VENV_BIN, free_port, state_url

pytestmark = pytest.mark.integration


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any TAGIFAI_*/GUNICORN_* variable of the caller, plus ``extra``.

    Make's own variables go too: under `make test` (as CI runs the suite) a child `make serve` would
    otherwise run as a sub-make and close with ``make[1]: ***`` instead of what a user sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGIFAI_", "GUNICORN_", "PROMETHEUS_"))
           and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def assert_one_line(result: subprocess.CompletedProcess, *expected: str, trailer: str | None = None) -> None:
    """Exit status non-zero; stderr is one ``error:`` line holding each of ``expected`` (for make,
    also its own closing ``make: *** ... Error`` line, after the progress of earlier steps); no
    traceback anywhere."""
    lines = result.stderr.strip().splitlines()
    if trailer is not None:
        assert lines and lines[-1].startswith(trailer), result.stderr
        # before it, only the INFO lines of the steps that went well (e.g. "default model ... is usable")
        lines = [line for line in lines[:-1] if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ INFO ", line)]
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def bad_keys_file(tmp_path) -> Path:
    path = tmp_path / "keys.json"
    path.write_text("{ not json")
    return path


CASES = {
    # name: (environment, text the line must hold)
    "unknown setting": ({"TAGIFAI_MAX_TEXT": "5"}, ("TAGIFAI_MAX_TEXT", "did you mean TAGIFAI_MAX_TEXTS", "valid:")),
    "malformed number": ({"TAGIFAI_MAX_TEXTS": "many"}, ("TAGIFAI_MAX_TEXTS", "whole number", "'many'")),
    "malformed boolean": ({"TAGIFAI_BATCHING": "perhaps"}, ("TAGIFAI_BATCHING", "true/false")),
    "bad choice": ({"TAGIFAI_AUTH": "maybe"}, ("TAGIFAI_AUTH", "admin, all, off")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gunicorn_refuses_a_bad_setting(case, artifacts_dir):
    env, expected = CASES[case]
    port = free_port()
    result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{port}", TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir), **env))
    assert_one_line(result, *expected)


def test_gunicorn_refuses_a_missing_artifacts_dir(tmp_path):
    result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{free_port()}", TAGIFAI_ARTIFACTS_DIR=str(tmp_path / "none")))
    assert_one_line(result, "TAGIFAI_ARTIFACTS_DIR", str(tmp_path / "none"), "make model")


@pytest.mark.parametrize("kind", ["not JSON", "a directory"])
def test_gunicorn_refuses_an_unreadable_old_keys_file(kind, artifacts_dir, bad_keys_file, tmp_path):
    """The old keys file is read to be imported into an empty store (a new one here)."""
    keys = bad_keys_file if kind == "not JSON" else tmp_path
    result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{free_port()}", TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir),
                                TAGIFAI_DATABASE_URL=f"sqlite:///{tmp_path / 'new.db'}",
                                TAGIFAI_API_KEYS_FILE=str(keys)))
    assert_one_line(result, "TAGIFAI_API_KEYS_FILE", str(keys), "imported into an empty store once")


@pytest.mark.parametrize("url", ["postgresql+psycopg://nobody@127.0.0.1:1/none", "sqlite:///{tmp}/file/state.db"])
def test_gunicorn_refuses_a_store_it_cannot_use(url, artifacts_dir, tmp_path):
    (tmp_path / "file").write_text("")  # a SQLite path under a regular file
    result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{free_port()}", TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir),
                                TAGIFAI_DATABASE_URL=url.format(tmp=tmp_path)))
    assert_one_line(result, "TAGIFAI_DATABASE_URL", "the state store is unavailable")


def test_gunicorn_refuses_a_port_in_use(artifacts_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{port}", TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir),
                                    TAGIFAI_DATABASE_URL=state_url(artifacts_dir)))
    assert_one_line(result, f"127.0.0.1:{port} is already in use", "PORT")


def test_gunicorn_refuses_a_malformed_gunicorn_setting(artifacts_dir):
    result = gunicorn(clean_env(GUNICORN_BIND=f"127.0.0.1:{free_port()}", GUNICORN_THREADS="many"))
    assert_one_line(result, "GUNICORN_THREADS", "'many'")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("case", ["unknown setting", "port in use"])
def test_make_serve_refuses_in_one_line(case, artifacts_dir):
    """`make serve`: the refusal's line, then only make's own note of the step that failed."""
    # the folder's own store: with another, `make model` would train a version into the shared folder
    env = clean_env(TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir), TAGIFAI_DATABASE_URL=state_url(artifacts_dir))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env["GUNICORN_BIND"] = f"127.0.0.1:{port}"
        if case == "unknown setting":
            env["TAGIFAI_MAX_TEXT"] = "5"
            expected = ("TAGIFAI_MAX_TEXT", "did you mean")
        else:
            expected = ("is already in use",)
        result = subprocess.run(["make", "--no-print-directory", "serve"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
    assert_one_line(result, *expected, trailer="make: ***")


def cli_commands() -> list[list[str]]:
    """Every command of ``python -m tagifai_api``, with arguments it accepts."""
    args = {"predict": ["some text"], "set-default": ["v1"], "score": ["in.csv", "--output", "out.csv"],
            "keys create": ["--name", "n", "--role", "admin"], "keys revoke": ["n"]}
    commands = []
    for name, command in sorted(cli.commands.items()):
        subcommands = sorted(getattr(command, "commands", {}) or {})
        for full in ([f"{name} {sub}" for sub in subcommands] or [name]):
            commands.append([*full.split(), *args.get(full, [])])
    return commands


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "python"), "-m", "tagifai_api", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", cli_commands(), ids=" ".join)
def test_every_command_refuses_a_bad_setting_in_one_line(argv, tmp_path, artifacts_dir):
    env = clean_env(TAGIFAI_ARTIFACTS_DIR=str(artifacts_dir), TAGIFAI_API_KEYS_FILE=str(tmp_path / "k.json"),
                    TAGIFAI_MAX_TEXT="5", PYTHONPATH=str(ROOT))
    assert_one_line(run_cli(argv, env, tmp_path), "TAGIFAI_MAX_TEXT", "valid:")


@pytest.mark.parametrize("argv", [c for c in cli_commands() if c[0] in {"evaluate", "predict", "versions",
                                                                         "set-default", "rollback", "score"}],
                         ids=" ".join)
def test_commands_that_read_models_refuse_a_missing_artifacts_dir(argv, tmp_path):
    env = clean_env(TAGIFAI_ARTIFACTS_DIR=str(tmp_path / "none"), PYTHONPATH=str(ROOT))
    assert_one_line(run_cli(argv, env, tmp_path), "TAGIFAI_ARTIFACTS_DIR", str(tmp_path / "none"))


@pytest.mark.parametrize("argv", [c for c in cli_commands() if c[0] == "keys"], ids=" ".join)
def test_keys_commands_refuse_an_unreadable_old_keys_file(argv, tmp_path, bad_keys_file):
    """An empty store (its schema made, as by a first start) imports the old keys file first."""
    from tagifai_api.store.database import Store

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = Store(url)
    store.upgrade()
    store.close()
    env = clean_env(TAGIFAI_API_KEYS_FILE=str(bad_keys_file), TAGIFAI_DATABASE_URL=url,
                    TAGIFAI_ARTIFACTS_DIR=str(tmp_path / "artifacts"), PYTHONPATH=str(ROOT))
    assert_one_line(run_cli(argv, env, tmp_path), str(bad_keys_file), "not valid JSON")
    store = Store(url)
    assert store.is_empty()  # nothing imported, nothing changed
    store.close()
