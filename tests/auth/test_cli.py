"""``python -m tagifai_api keys``: the key is printed once, lists never show secrets, errors are one line;
every command works on the store TAGIFAI_DATABASE_URL names (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tagifai_api import cli
from tagifai_api.auth import keys
from tagifai_api.store.database import Store


@pytest.fixture
def database(store_url, tmp_path, monkeypatch):
    """The store the commands use (its schema made, no key yet), named by TAGIFAI_DATABASE_URL; no old
    keys file to import."""
    monkeypatch.setenv("TAGIFAI_DATABASE_URL", store_url)
    monkeypatch.setenv("TAGIFAI_API_KEYS_FILE", str(tmp_path / "no-old-keys-file.json"))
    monkeypatch.setenv("TAGIFAI_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    store = Store(store_url)
    store.upgrade()
    yield store
    store.close()


def state(store: Store) -> tuple:
    """Everything a key command may change: the keys, the change counter, the audit log."""
    return store.keys(), store.generation(), store.audit()


def run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run the real entry point; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tagifai", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def test_create_prints_the_key_once_and_stores_its_hash(database, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    assert code == 0
    key = out.strip()
    assert key.startswith(keys.PREFIX) and "\n" not in key
    assert "not shown again" in err and key not in err
    assert database.describe() in err  # which store it went to
    (entry,) = database.keys()
    assert entry["name"] == "ci" and entry["sha256"] == keys.hash_key(key)
    assert key not in repr(state(database))
    (audited,) = database.audit()
    assert (audited["action"], audited["to"], audited["key_name"]) == ("create_key", "ci (predict)", None)


def test_list_shows_names_roles_and_dates_never_hashes(database, monkeypatch, capsys):
    run(monkeypatch, capsys, "keys", "create", "--name", "reader", "--role", "predict")
    run(monkeypatch, capsys, "keys", "create", "--name", "ops", "--role", "admin")
    code, out, _ = run(monkeypatch, capsys, "keys", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "CREATED"]
    assert sorted(line.split()[:2] for line in lines[1:]) == [["ops", "admin"], ["reader", "predict"]]
    for entry in database.keys():
        assert entry["sha256"] not in out and entry["created_at"] in out


def test_list_of_no_keys_says_so(database, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "keys", "list")
    assert code == 0 and out == "" and err == f"no keys in {database.describe()}\n"


def test_revoke_removes_the_key(database, monkeypatch, capsys):
    run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    code, _, err = run(monkeypatch, capsys, "keys", "revoke", "ci")
    assert code == 0 and "revoked" in err
    assert database.keys() == []
    assert [(e["action"], e["from"]) for e in database.audit()] == [("revoke_key", "ci (predict)"),
                                                                     ("create_key", None)]


def test_the_database_url_setting_chooses_the_store(database, tmp_path, monkeypatch, capsys):
    """What the --file option did: the setting names the store the command works on (the option is gone)."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("TAGIFAI_DATABASE_URL", other)
    assert run(monkeypatch, capsys, "keys", "create", "--name", "x", "--role", "admin")[0] == 0
    elsewhere = Store(other)
    assert [k["name"] for k in elsewhere.keys()] == ["x"] and database.keys() == []
    elsewhere.close()
    code, out, err = run(monkeypatch, capsys, "keys", "--file", str(tmp_path / "k.json"), "list")
    assert code == 2 and out == "" and err.startswith("error: No such option '--file'") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["keys", "create", "--name", "ci", "--role", "predict"], "error: a key named 'ci' exists already"),
    (["keys", "create", "--name", "no spaces", "--role", "predict"], "error: invalid key name"),
    (["keys", "create", "--name", "x", "--role", "root"], "Invalid value for '--role'"),
    (["keys", "create", "--role", "admin"], "Missing option '--name'"),
    (["keys", "revoke", "nobody"], "error: no key named 'nobody'; keys: ci"),
])
def test_usage_errors_are_one_clear_line_and_exit_2(database, monkeypatch, capsys, argv, message):
    run(monkeypatch, capsys, "keys", "create", "--name", "ci", "--role", "predict")
    before = state(database)
    code, out, err = run(monkeypatch, capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert state(database) == before


def test_a_malformed_old_keys_file_is_one_line_and_exit_2(database, tmp_path, monkeypatch, capsys):
    """The old keys file, imported into an empty store: a broken one stops the command, nothing imported."""
    old = tmp_path / "api_keys.json"
    old.write_text("not json")
    monkeypatch.setenv("TAGIFAI_API_KEYS_FILE", str(old))
    code, out, err = run(monkeypatch, capsys, "keys", "list")
    assert code == 2 and out == ""
    assert err.startswith(f"error: keys file {old} is not valid JSON") and err.count("\n") == 1
    assert database.keys() == [] and database.audit() == []


def test_an_old_keys_file_is_imported_by_the_first_command_and_listed(database, tmp_path, monkeypatch, capsys):
    old = tmp_path / "api_keys.json"
    old.write_text('{"keys": [{"name": "legacy", "role": "admin", "created_at": "2025-06-01T00:00:00Z", '
                   f'"sha256": "{"a" * 64}"}}]}}')
    monkeypatch.setenv("TAGIFAI_API_KEYS_FILE", str(old))
    code, out, _ = run(monkeypatch, capsys, "keys", "list")
    assert code == 0 and out.splitlines()[1].split() == ["legacy", "admin", "2025-06-01T00:00:00Z"]
    run(monkeypatch, capsys, "keys", "revoke", "legacy")
    code, out, err = run(monkeypatch, capsys, "keys", "list")  # not imported again
    assert code == 0 and out == "" and "no keys" in err


def test_an_unusable_store_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("TAGIFAI_API_KEYS_FILE", str(tmp_path / "no-old-keys-file.json"))
    for url, reason in ((f"sqlite:///{blocker / 'state.db'}", f"cannot create {blocker / 'state.db'}"),
                        ("postgresql+psycopg://nobody@127.0.0.1:1/none", "Connection refused")):
        monkeypatch.setenv("TAGIFAI_DATABASE_URL", url)
        code, out, err = run(monkeypatch, capsys, "keys", "create", "--name", "x", "--role", "admin")
        assert code == 2 and out == ""
        assert err.startswith("error: the state store is unavailable (") and reason in err, err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_the_default_store_and_the_old_keys_file_are_never_committed():
    from tagifai_api import settings

    store = Path(str(settings.DEFAULTS["DATABASE_URL"]).removeprefix("sqlite:///"))
    old_keys = Path(str(settings.DEFAULTS["API_KEYS_FILE"]))
    assert store == settings.ROOT / "var" / "tagifai.db"
    assert old_keys == settings.ROOT / "config" / "api_keys.json"
    for path in (store, store.with_name("tagifai.db-wal"), store.with_name("tagifai.db-shm"), old_keys,
                 old_keys.parent / f".{old_keys.name}.lock", old_keys.parent / f".{old_keys.name}.x1y2"):
        out = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=settings.ROOT, capture_output=True)
        assert out.returncode == 0, f"{path} is not git-ignored"


def test_a_bad_setting_in_the_environment_is_one_line_and_exit_2(database, monkeypatch, capsys):
    monkeypatch.setenv("TAGIFAI_AUTH", "sometimes")
    code, out, err = run(monkeypatch, capsys, "keys", "list")
    assert code == 2 and out == ""
    assert err == "error: TAGIFAI_AUTH: expected one of admin, all, off, got 'sometimes'\n"
