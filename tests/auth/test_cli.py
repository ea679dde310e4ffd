"""``python -m tagifai_api keys``: the key is printed once, lists never show secrets, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tagifai_api import cli
from tagifai_api.auth import keys


@pytest.fixture
def keys_file(tmp_path, monkeypatch):
    path = tmp_path / "api_keys.json"
    monkeypatch.setenv("TAGIFAI_API_KEYS_FILE", str(path))
    return path


def run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real entry point; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tagifai", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def test_create_prints_the_key_once_and_stores_its_hash(keys_file, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    assert code == 0
    key = out.strip()
    assert key.startswith(keys.PREFIX) and "\n" not in key
    assert "not shown again" in err and key not in err
    (entry,) = json.loads(keys_file.read_text())["keys"]
    assert entry["sha256"] == keys.hash_key(key) and key not in keys_file.read_text()


def test_list_shows_names_roles_and_dates_never_hashes(keys_file, monkeypatch, capsys):
    run(monkeypatch, capsys, "keys", "create", "--name", "reader", "--role", "predict")
    run(monkeypatch, capsys, "keys", "create", "--name", "ops", "--role", "admin")
    code, out, _ = run(monkeypatch, capsys, "keys", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED"]
    assert [line.split()[:2] for line in lines[1:]] == [["reader", "predict"], ["ops", "admin"]]
    for entry in json.loads(keys_file.read_text())["keys"]:
        assert entry["sha256"] not in out and entry["created_at"] in out


def test_revoke_removes_the_key(keys_file, monkeypatch, capsys):
    run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    code, _, err = run(monkeypatch, capsys, "keys", "revoke", "ci")
    assert code == 0 and "revoked" in err
    assert json.loads(keys_file.read_text())["keys"] == []


def test_file_option_overrides_the_setting(tmp_path, keys_file, monkeypatch, capsys):
    other = tmp_path / "other.json"
    run(monkeypatch, capsys, "keys", "--file", str(other), "create", "--name", "x", "--role", "admin")
    assert other.exists() and not keys_file.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["keys", "create", "--name", "ci", "--role", "predict"], "error: a key named 'ci' exists already"),
    (["keys", "create", "--name", "no spaces", "--role", "predict"], "error: invalid key name"),
    (["keys", "create", "--name", "x", "--role", "root"], "Invalid value for '--role'"),
    (["keys", "create", "--role", "admin"], "Missing option '--name'"),
    (["keys", "revoke", "nobody"], "error: no key named 'nobody'; keys: ci"),
])
def test_usage_errors_are_one_clear_line_and_exit_2(keys_file, monkeypatch, capsys, argv, message):
    run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    before = keys_file.read_bytes()
    code, out, err = run(monkeypatch, capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert keys_file.read_bytes() == before


def test_malformed_file_is_one_line_and_exit_2(keys_file, monkeypatch, capsys):
    keys_file.write_text("not json")
    code, _, err = run(monkeypatch, capsys, "keys", "list")
    assert code == 2
    assert err.startswith(f"error: keys file {keys_file} is not valid JSON") and err.count("\n") == 1


def test_unwritable_place_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(monkeypatch, capsys, "keys", "--file", str(blocker / "keys.json"), "create",
                       "--name", "x", "--role", "admin")
    assert code == 2
    assert err.startswith(f"error: keys file {blocker / 'keys.json'} cannot be written:") and err.count("\n") == 1


def test_the_default_keys_file_is_never_committed():
    from tagifai_api import settings

    default = Path(str(settings.DEFAULTS["API_KEYS_FILE"]))
    assert default == settings.ROOT / "config" / "api_keys.json"
    for path in (default, default.parent / f".{default.name}.lock", default.parent / f".{default.name}.x1y2"):
        out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=settings.ROOT, capture_output=True)
        assert out.returncode == 0, f"{path} is not git-ignored"


def test_a_bad_setting_in_the_environment_is_one_line_and_exit_2(keys_file, monkeypatch, capsys):
    monkeypatch.setenv("TAGIFAI_AUTH", "sometimes")
    code, out, err = run(monkeypatch, capsys, "keys", "list")
    assert code == 2 and out == ""
    assert err == "error: TAGIFAI_AUTH: expected one of admin, all, off, got 'sometimes'\n"
