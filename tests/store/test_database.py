"""The store on SQLite and on a real PostgreSQL: schema, registry pointers and history, keys, audit log,
concurrent writers, and what a caller sees while the database is down."""

from __future__ import annotations

import threading

import pytest

from tagifai_api.store.database import (
    HISTORY_LIMIT,
    SCHEMA_HEAD,
    ConflictError,
    NotFoundError,
    Store,
    StoreSchemaError,
    StoreUnavailableError,
)


def _ok(version):
    return None


def test_upgrade_is_idempotent_and_check_passes(store):
    assert store.revisions()[0] == store.revisions()[1]
    assert store.upgrade()[0] == store.upgrade()[1]
    store.check()


def test_the_schema_head_the_code_checks_is_alembics(store):
    assert store.revisions()[1] == SCHEMA_HEAD


def test_an_empty_database_is_refused_until_upgraded(store_url):
    s = Store(store_url)
    with pytest.raises(StoreSchemaError, match="store upgrade"):
        s.check()
    s.upgrade()
    s.check()
    s.close()


def test_a_schema_newer_than_the_code_is_refused_in_one_line(store):
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreSchemaError, match="newer than this code") as info:
        store.check()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreSchemaError, match="newer than this code"):
        store.upgrade()


def test_two_processes_upgrading_an_empty_database_at_once_both_succeed(store_url):
    stores = [Store(store_url), Store(store_url)]
    barrier = threading.Barrier(2)
    errors = []

    def upgrade(store):
        barrier.wait()
        try:
            store.upgrade()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    stores[0].check()
    assert stores[0].generation() == 0
    for s in stores:
        s.close()


def test_switches_keep_the_history_newest_last_and_rollbacks_walk_back(store):
    assert store.pointers() == (None, None)
    for version in ("a", "b", "c", "d"):
        store.set_default(version, _ok)
    assert [e["version"] for e in store.history()] == ["a", "b", "c"]
    assert store.set_default("d", _ok) == ("d", "d")  # already the default: nothing recorded
    assert store.rollback(_ok) == ("d", "c")
    assert store.rollback(_ok) == ("c", "b")
    assert [e["version"] for e in store.history()] == ["a"]
    assert store.pointers() == ("b", None)
    assert store.rollback(_ok) == ("b", "a")
    with pytest.raises(ConflictError, match="history is empty"):
        store.rollback(_ok)


def test_history_keeps_its_newest_entries_only(store):
    for i in range(HISTORY_LIMIT + 5):
        store.set_default(f"v{i}", _ok)
    history = [e["version"] for e in store.history()]
    assert len(history) == HISTORY_LIMIT
    assert history[-1] == f"v{HISTORY_LIMIT + 3}" and history[0] == "v4"


def test_a_refusing_verifier_changes_nothing(store):
    store.set_default("a", _ok)
    generation = store.generation()

    def refuse(version):
        raise ValueError(f"{version} is broken")

    with pytest.raises(ValueError):
        store.set_default("b", refuse)
    store.set_default("b", _ok)
    with pytest.raises(ValueError):
        store.rollback(refuse)
    assert store.pointers()[0] == "b" and [e["version"] for e in store.history()] == ["a"]
    assert store.generation() == generation + 1


def test_every_change_moves_the_generation_and_is_audited(store):
    seen = [store.generation()]
    store.set_default("a", _ok, key_name="ops", reason="first")
    store.set_default("b", _ok, key_name="ops", reason="better")
    store.set_shadow("c", _ok, key_name="ops")
    store.clear_shadow(key_name="ops")
    store.clear_shadow()  # no shadow: nothing happens
    store.rollback(_ok, key_name="ops", reason="regression")
    store.add_key("reader", "predict", "2026-12-06T00:00:00Z", "a" * 64, key_name="ops")
    store.revoke_key("reader", key_name="ops")
    seen.append(store.generation())
    assert seen[1] - seen[0] == 7
    audit = store.audit()
    assert [(e["action"], e["from"], e["to"], e["reason"]) for e in audit] == [
        ("revoke_key", "reader (predict)", None, None),
        ("create_key", None, "reader (predict)", None),
        ("rollback", "b", "a", "regression"),
        ("clear_shadow", "c", None, None),
        ("set_shadow", None, "c", None),
        ("set_default", "a", "b", "better"),
        ("set_default", None, "a", "first"),
    ]
    assert {e["key_name"] for e in audit} == {"ops"}
    assert [e["action"] for e in store.audit(limit=2)] == ["revoke_key", "create_key"]


def test_keys_hold_hashes_with_unique_names(store):
    store.add_key("a", "admin", "2026-12-06T00:00:00Z", "1" * 64)
    with pytest.raises(ConflictError, match="exists already"):
        store.add_key("a", "predict", "2026-12-06T00:00:01Z", "2" * 64)
    store.add_key("b", "predict", "2026-12-06T00:00:02Z", "3" * 64)
    assert [(k["name"], k["role"], k["sha256"]) for k in store.keys()] == [("a", "admin", "1" * 64),
                                                                         ("b", "predict", "3" * 64)]
    with pytest.raises(NotFoundError, match="keys: a, b"):
        store.revoke_key("c")
    assert store.revoke_key("a")["role"] == "admin"
    assert [k["name"] for k in store.keys()] == ["b"]


def test_two_writers_at_once_lose_nothing(store_url):
    """Two processes' worth of writers (separate stores, separate connections) switching at the same
    moment: every switch is either the default or in the history, exactly once."""
    stores = [Store(store_url), Store(store_url)]
    stores[0].upgrade()
    barrier = threading.Barrier(2)
    errors = []

    def switch(store, names):
        barrier.wait()
        try:
            for name in names:
                store.set_default(name, _ok)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=switch, args=(s, [f"{i}-{n}" for n in range(10)]))
               for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    default = stores[0].pointers()[0]
    recorded = [e["version"] for e in stores[0].history()] + [default]
    assert sorted(recorded) == sorted(f"{i}-{n}" for i in range(2) for n in range(10))
    assert stores[0].generation() == 20
    for s in stores:
        s.close()


def test_an_unreachable_database_is_one_clear_error_and_counted():
    failures = []
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none", on_error=failures.append)
    with pytest.raises(StoreUnavailableError, match="state store is unavailable"):
        store.pointers()
    with pytest.raises(StoreUnavailableError):
        store.set_default("a", _ok)
    assert failures == ["read", "set_default"]


def test_the_url_is_described_without_its_password():
    store = Store("postgresql+psycopg://tagifai:s3cret@db.example/tagifai")
    assert "s3cret" not in store.describe() and "tagifai" in store.describe()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'state.db'}")
    store.upgrade()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()
    assert (tmp_path / "sub" / "state.db").exists()


def test_a_forked_child_gets_an_engine_of_its_own(store):
    import os

    store.pointers()
    parent = store.engine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new engine, the parent's connections untouched
        try:
            ok = store.engine is not parent and store.pointers() == (None, None)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert store.engine is parent and store.pointers() == (None, None)


def test_the_migrations_build_exactly_the_schema_tables_py_describes(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tagifai_api.store.tables import metadata

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_the_text_hash_migration_rehashes_the_feedback_that_kept_its_text(store_url):
    """0005: feedback's ``text_sha256`` becomes ``text_hash``, the log's XXH3 of each kept text; a
    correction without its text keeps the SHA-256 it had. Downgrading gives the SHA-256 back."""
    import hashlib

    import sqlalchemy as sa
    from alembic import command

    from tagifai_api.serving.predlog import text_hash

    def sha(text):
        return hashlib.sha256(text.encode()).hexdigest()

    s = Store(store_url)
    try:
        with s.engine.begin() as conn:
            command.upgrade(s._alembic(conn), "0004")
        rows = [("t:a", "a hand-tagged text", sha("a hand-tagged text")), ("p:r:0", None, sha("never kept"))]
        rows += [(f"t:{i}", f"text {i}", sha(f"text {i}")) for i in range(2500)]  # more than one batch
        with s.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO feedback (subject, at, source, tag, text_sha256, text) "
                                 "VALUES (:subject, 0, 'text', 'mlops', :digest, :text)"),
                         [{"subject": subject, "text": text, "digest": digest} for subject, text, digest in rows])
        assert s.upgrade() == ("0004", SCHEMA_HEAD)
        with s.engine.connect() as conn:
            got = dict(conn.execute(sa.text("SELECT subject, text_hash FROM feedback")).all())
        assert got["t:a"] == text_hash("a hand-tagged text") and len(got["t:a"]) == 32
        assert got["p:r:0"] == sha("never kept")
        assert all(got[f"t:{i}"] == text_hash(f"text {i}") for i in range(2500))
        with s.engine.begin() as conn:
            command.downgrade(s._alembic(conn), "0004")
        with s.engine.connect() as conn:
            back = dict(conn.execute(sa.text("SELECT subject, text_sha256 FROM feedback")).all())
        assert back == {subject: digest for subject, _, digest in rows}
    finally:
        s.close()


def test_concurrent_first_corrections_of_the_same_subjects_all_succeed(store_url):
    """Writers of their own (as workers are) correcting the same two never-corrected subjects at one moment,
    half of them in the other order: no row exists to lock, so the inserts meet on the unique subject.
    Every request succeeds, each subject keeps one row (a writer's tag), and exactly one writer created it."""
    import sqlalchemy as sa

    from tagifai_api.store import tables

    writers = 4
    stores = [Store(store_url) for _ in range(writers)]
    stores[0].upgrade()
    barrier = threading.Barrier(writers)

    def correction(subject, tag):
        return {"subject": subject, "at": 0.0, "source": "text", "request_id": None, "position": None,
                "model_version": None, "predicted": None, "tag": tag, "text_hash": "0" * 32, "text": subject,
                "key_name": None}

    try:
        for round_ in range(10):
            subjects = [f"t:{round_}-a", f"t:{round_}-b"]
            outcomes, errors = {}, []

            def write(i, store, subjects=subjects, outcomes=outcomes, errors=errors):
                items = [correction(s, f"tag-{i}") for s in subjects][::-1 if i % 2 else 1]
                barrier.wait(30)
                try:
                    outcomes[i] = dict(zip((item["subject"] for item in items), store.record_feedback(items),
                                           strict=True))
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(i, s)) for i, s in enumerate(stores)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            for subject in subjects:
                assert sorted(o[subject] for o in outcomes.values()) == ["created"] + ["updated"] * (writers - 1)
        with stores[0].engine.connect() as conn:
            rows = conn.execute(sa.select(tables.feedback.c.subject, tables.feedback.c.tag)).all()
        assert sorted(subject for subject, _ in rows) == sorted(f"t:{r}-{x}" for r in range(10) for x in "ab")
        assert {tag for _, tag in rows} <= {f"tag-{i}" for i in range(writers)}
    finally:
        for s in stores:
            s.close()
