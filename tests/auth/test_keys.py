"""The keys: hashing, their place in the store (SQLite and a real PostgreSQL), the per-worker ring that
follows them, what it keeps through an outage, and the one-time import of an old keys file."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy

from tagifai_api.auth import keys
from tagifai_api.auth.keys import ApiKey, KeyRing, KeyStore, KeyStoreError
from tagifai_api.store import open_store
from tagifai_api.store.database import Store
from tagifai_api.store.legacy import LegacyFileError, import_files
from tests.helpers import store_outage, wait_until

POLL_S = 0.05


@pytest.fixture
def another(store_url):
    """``another()``: a Store of its own on the test's database, as another process has; closed after."""
    made: list[Store] = []

    def factory() -> Store:
        made.append(Store(store_url))
        return made[-1]

    yield factory
    for s in made:
        s.close()


@pytest.fixture
def store(another) -> Store:
    """The test's store, its schema made (on SQLite, then on PostgreSQL)."""
    made = another()
    made.upgrade()
    return made


@pytest.fixture
def outage(request, store_url):
    """``outage(*stores)``: the test's store unreachable for a block (PostgreSQL stopped, or the SQLite
    file gone), each of ``stores`` dropping its connections first."""
    server = request.getfixturevalue("pg_server") if store_url.startswith("postgresql") else None
    return lambda *stores: store_outage(store_url, server, stores)


@pytest.fixture
def errors():
    """The ERROR records of the keys' logger."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = seen.append
    logger = logging.getLogger("tagifai_api.auth")
    logger.addHandler(handler)
    yield seen
    logger.removeHandler(handler)


def everything_stored(store: Store) -> str:
    """Every row of every table, as text: what someone with a copy of the database sees."""
    from tagifai_api.store import tables

    with store.engine.connect() as conn:
        return repr([conn.execute(sqlalchemy.select(table)).all() for table in tables.metadata.sorted_tables])


def test_keys_are_random_prefixed_and_carry_256_bits():
    made = {keys.generate_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert key.startswith(keys.PREFIX)
        body = key[len(keys.PREFIX):]
        assert len(body) == 43 and set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_hash_is_sha256_hex():
    assert keys.hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_create_stores_only_a_hash(store):
    key = KeyStore(store).create("ci", "predict")
    (entry,) = store.keys()
    assert entry["name"] == "ci" and entry["role"] == "predict"
    assert entry["sha256"] == keys.hash_key(key)
    assert entry["created_at"].endswith("Z")
    assert key not in everything_stored(store)
    if store.dialect == "sqlite":
        database = sqlalchemy.make_url(store.url).database
        store.close()  # the WAL checkpointed into the file
        assert key.encode() not in Path(database).read_bytes()


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path):
    """The keys' hashes and the audit log, like the keys file before them: 0600, whatever the umask."""
    path = tmp_path / "var" / "state.db"
    old = os.umask(0o022)
    try:
        store = Store(f"sqlite:///{path}")
        store.upgrade()
        KeyStore(store).create("ci", "predict")
        for part in (path, path.with_name("state.db-wal"), path.with_name("state.db-shm")):
            assert stat.S_IMODE(part.stat().st_mode) == 0o600, part
        store.close()
    finally:
        os.umask(old)


def test_a_place_that_cannot_hold_the_sqlite_store_is_one_clear_error(tmp_path):
    from tagifai_api.store.database import StoreUnavailableError

    blocker = tmp_path / "file"
    blocker.write_text("")
    for where in (blocker / "state.db", blocker / "sub" / "state.db"):
        with pytest.raises(StoreUnavailableError, match=f"cannot create {where}: .*[Nn]ot a directory") as info:
            KeyStore(Store(f"sqlite:///{where}")).list()
        assert "\n" not in str(info.value)


def test_each_change_is_one_transaction_with_its_audit_entry(store):
    """A key, the change counter and the audit line are written together, or, refused, not at all."""
    made = KeyStore(store)
    start = store.generation()
    made.create("a", "predict")
    made.create("b", "admin")
    assert store.generation() == start + 2
    before = (store.keys(), store.generation(), store.audit())
    with pytest.raises(KeyStoreError):
        made.create("a", "admin")
    with pytest.raises(KeyStoreError):
        made.revoke("nobody")
    assert (store.keys(), store.generation(), store.audit()) == before
    assert [k.name for k in made.list()] == ["a", "b"]
    assert [(e["action"], e["to"]) for e in store.audit()] == [("create_key", "b (admin)"), ("create_key", "a (predict)")]


@pytest.mark.parametrize(("name", "role", "message"), [
    ("dup", "predict", "exists already"),
    ("bad name", "predict", "invalid key name"),
    ("", "predict", "invalid key name"),
    ("x" * 65, "predict", "invalid key name"),
    ("ok", "root", "invalid role"),
])
def test_create_refuses_bad_or_duplicate_names_and_roles(store, name, role, message):
    made = KeyStore(store)
    made.create("dup", "admin")
    with pytest.raises(KeyStoreError, match=message):
        made.create(name, role)
    assert [k.name for k in made.list()] == ["dup"]


def test_revoke_removes_one_and_names_the_others_when_unknown(store):
    made = KeyStore(store)
    made.create("a", "predict")
    made.create("b", "admin")
    assert made.revoke("a").name == "a"
    with pytest.raises(KeyStoreError, match="no key named 'a'; keys: b"):
        made.revoke("a")


def test_concurrent_creates_lose_nothing(store, another):
    """Twenty writers at once over two stores' connections, as two processes would."""
    made = [KeyStore(another()), KeyStore(another())]
    failures = []

    def create(i):
        try:
            made[i % 2].create(f"k{i}", "predict")
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert sorted(k.name for k in KeyStore(store).list()) == sorted(f"k{i}" for i in range(20))
    assert [e["action"] for e in store.audit()].count("create_key") == 20


def test_an_empty_store_means_no_keys(store):
    ring = KeyRing(store, poll_s=0)
    assert ring.keys == () and not ring.has_role("predict")


def test_lookup_finds_the_key_and_nothing_else(store):
    made = KeyStore(store)
    admin = made.create("ops", "admin")
    reader = made.create("reader", "predict")
    ring = KeyRing(store, poll_s=0)
    assert ring.lookup(admin).name == "ops"
    assert ring.lookup(reader).role == "predict"
    assert ring.lookup(admin[:-1]) is None
    assert ring.lookup(keys.hash_key(admin)) is None  # the stored hash is not a key
    assert ring.lookup("x" * 10_000) is None
    assert ring.has_role("admin") and ring.has_role("predict")


def test_lookup_compares_the_whole_hash(store):
    """A stored hash equal to a key's in all but its last hex digit is another key's: it must neither
    answer for the key nor, listed after the real entry, take its place with a stronger role."""
    key = keys.generate_key()
    digest = keys.hash_key(key)
    near = digest[:-1] + ("1" if digest[-1] == "0" else "0")
    store.add_key("impostor", "admin", "2026-01-02T00:00:00Z", near)
    assert KeyRing(store, poll_s=0).lookup(key) is None
    store.add_key("reader", "predict", "2026-01-01T00:00:00Z", digest)  # listed first, oldest first
    assert [k["name"] for k in store.keys()] == ["reader", "impostor"]
    assert KeyRing(store, poll_s=0).lookup(key) == ApiKey("reader", "predict", "2026-01-01T00:00:00Z", digest)


def test_lookup_compares_in_constant_time(store, monkeypatch):
    made = KeyStore(store)
    key = made.create("a", "admin")
    made.create("b", "predict")
    ring = KeyRing(store, poll_s=0)
    compared = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert ring.lookup(key).name == "a"
    assert len(compared) == 2  # every entry, even after the match: no early exit


def test_roles_are_ordered():
    assert keys.role_allows("admin", "predict") and keys.role_allows("admin", "admin")
    assert keys.role_allows("predict", "predict") and not keys.role_allows("predict", "admin")


class Watched(Store):
    """A store recording, in order, when each poll of the change counter and each read of the keys started."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: list[tuple[str, float]] = []

    def generation(self) -> int:
        self.calls.append(("poll", time.monotonic()))
        return super().generation()

    def keys(self) -> list[dict]:
        self.calls.append(("keys", time.monotonic()))
        return super().keys()


def test_lookups_never_wait_for_the_store(store):
    key = KeyStore(store).create("a", "admin")
    watched = Watched(store.url)
    ring = KeyRing(watched, poll_s=0)
    assert [kind for kind, _ in watched.calls] == ["poll", "keys"]
    for _ in range(1000):
        assert ring.lookup(key).name == "a" and ring.has_role("admin")
    assert len(watched.calls) == 2
    watched.close()


def test_ring_follows_keys_made_and_revoked_by_another_process_at_its_next_poll(store, another):
    """Another process's change (its own Store and connections) is read by the first poll that starts
    after it: the watcher needs no signal, no restart, no second look; and it polls no more often
    than every ``poll_s``."""
    other = KeyStore(another())
    watched = Watched(store.url)
    started = time.monotonic()
    ring = KeyRing(watched, poll_s=POLL_S)

    def followed(change, in_force) -> None:
        seen = len(watched.calls)
        change()
        done = time.monotonic()
        wait_until(in_force, what="the change in force")
        later = watched.calls[seen:]
        first_poll = next(i for i, (kind, at) in enumerate(later) if kind == "poll" and at > done)
        assert ("keys" in [kind for kind, _ in later[:first_poll + 2]]), later

    try:
        key = None

        def create():
            nonlocal key
            key = other.create("probe", "predict")

        followed(create, lambda: ring.lookup(key) is not None)
        assert ring.lookup(key).name == "probe"
        followed(lambda: other.revoke("probe"), lambda: ring.lookup(key) is None)
        assert ring.keys == ()
        polls = [at for kind, at in watched.calls if kind == "poll"]
        assert len(polls) <= (time.monotonic() - started) / POLL_S + 2
    finally:
        ring.close()
        watched.close()


def test_revoking_every_key_leaves_none_in_force_nor_kept_on_this_host(store, another):
    key = KeyStore(store).create("a", "admin")
    ring = KeyRing(store, poll_s=0)
    KeyStore(another()).revoke("a")
    ring.refresh()
    assert ring.lookup(key) is None and ring.keys == ()
    assert store.last_known("keys") == []


def test_ring_keeps_its_keys_while_the_store_is_unreachable_and_logs_once(store, another, outage, errors):
    key = KeyStore(store).create("a", "admin")
    ring_store = another()
    ring = KeyRing(ring_store, poll_s=0)
    with outage(store, ring_store):
        for _ in range(5):
            ring.refresh()
            assert ring.lookup(key).name == "a" and ring.has_role("admin")
    assert len(errors) == 1, [e.getMessage() for e in errors]
    assert "state store is unavailable" in errors[0].getMessage()
    assert "keeping the 1 keys read before" in errors[0].getMessage()
    KeyStore(store).revoke("a")  # the store answers again: followed at the next poll
    ring.refresh()
    assert ring.lookup(key) is None
    with outage(store, ring_store):  # a later outage is logged again
        ring.refresh()
    assert len(errors) == 2


def test_a_ring_whose_store_cannot_connect_starts_with_no_keys_and_its_watcher_survives(errors):
    """A URL nothing listens on: the ring starts all the same (a worker must boot), refuses every key,
    and its watcher goes on polling, logging the failure once."""
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    watched = Watched(store.url)
    ring = KeyRing(watched, poll_s=POLL_S)
    try:
        wait_until(lambda: len(watched.calls) >= 5, what="five polls")
        assert ring.keys == () and not ring.has_role("predict")
        assert [kind for kind, _ in watched.calls] == ["poll"] * len(watched.calls)
        assert len(errors) == 1 and "Connection refused" in errors[0].getMessage()
        assert "starting with no keys" in errors[0].getMessage()
    finally:
        ring.close()


def test_a_ring_started_in_an_outage_holds_the_keys_this_host_last_read(store, another, outage, errors):
    """A worker started (or restarted) while the store is down: it serves the keys a worker of this
    host last read, not none, and follows the store once it answers."""
    made = KeyStore(store)
    kept = made.create("kept", "admin")
    gone = made.create("gone", "predict")
    made.revoke("gone")
    KeyRing(store, poll_s=0)  # a worker of this host reads the keys
    late = another()
    with outage(store, late):
        ring = KeyRing(late, poll_s=0)
        assert ring.lookup(kept).name == "kept" and ring.lookup(gone) is None
    assert len(errors) == 1 and "starting with the 1 keys this host last read" in errors[0].getMessage()
    made.revoke("kept")
    ring.refresh()
    assert ring.lookup(kept) is None


def test_a_ring_started_in_an_outage_with_nothing_kept_refuses_every_key_until_the_store_answers(
        store, another, outage, errors):
    key = KeyStore(store).create("a", "admin")
    late = another()
    late._snapshot_path("keys").unlink(missing_ok=True)  # no worker of this host ever read them
    with outage(store, late):
        ring = KeyRing(late, poll_s=0)
        for _ in range(3):
            ring.refresh()
            assert ring.lookup(key) is None and not ring.has_role("predict")
    assert len(errors) == 1 and "starting with no keys (every key refused)" in errors[0].getMessage()
    ring.refresh()
    assert ring.lookup(key).name == "a"


def test_what_this_host_keeps_is_never_older_than_what_it_read(store, another, outage):
    """A key revoked while no worker ran: the next worker's first read replaces what this host kept,
    so a worker started in a later outage does not bring the revoked key back."""
    key = KeyStore(store).create("a", "admin")
    KeyRing(store, poll_s=0)
    KeyStore(another()).revoke("a")  # no ring running
    KeyRing(store, poll_s=0)  # the next worker: no keys, as before it, but it read them
    late = another()
    with outage(store, late):
        assert KeyRing(late, poll_s=0).lookup(key) is None


def test_a_kept_file_planted_by_another_user_is_not_trusted(store, another, outage, errors):
    """The kept keys live in the temporary directory, which every local user may write: a file there
    under the expected name that is not this user's own must not give anyone a key."""
    planted = keys.generate_key()
    path = store._snapshot_path("keys")
    row = {"name": "intruder", "role": "admin", "created_at": "2026-01-01T00:00:00Z", "sha256": keys.hash_key(planted)}
    path.write_text(json.dumps([row]))
    late = another()
    for owner, mode in ((65534, 0o600), (os.geteuid(), 0o666)):
        os.chown(path, owner, -1)
        os.chmod(path, mode)
        with outage(store, late):
            ring = KeyRing(late, poll_s=0)
            assert ring.lookup(planted) is None and ring.keys == ()
    os.chown(path, os.geteuid(), -1)
    os.chmod(path, 0o600)
    with outage(store, late):  # the same file, this user's own and private: what this host kept
        assert KeyRing(late, poll_s=0).lookup(planted).name == "intruder"
    path.unlink()


# --- the old keys file, imported once ------------------------------------------------------------


def old_keys_file(path, *entries: tuple[str, str]) -> dict[str, str]:
    """An old install's keys file holding ``(name, role)`` keys; returns ``{name: key}``."""
    made = {name: keys.generate_key() for name, _ in entries}
    path.write_text(json.dumps({"keys": [
        {"name": name, "role": role, "created_at": "2025-06-01T00:00:00Z", "sha256": keys.hash_key(made[name])}
        for name, role in entries]}))
    return made


def start(store_url, tmp_path, keys_file) -> Store:
    """What a start does: open the store with the schema upgraded and the old files imported."""
    return open_store({"DATABASE_URL": store_url, "STORE_UPGRADE": True, "ARTIFACTS_DIR": str(tmp_path / "none"),
                       "API_KEYS_FILE": str(keys_file)})


def test_an_old_keys_file_is_imported_once_into_an_empty_store(store_url, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    made = old_keys_file(keys_file, ("ops", "admin"), ("reader", "predict"))
    original = keys_file.read_bytes()
    store = start(store_url, tmp_path, keys_file)
    ring = KeyRing(store, poll_s=0)
    assert ring.lookup(made["ops"]).role == "admin" and ring.lookup(made["reader"]).role == "predict"
    assert [k.created_at for k in ring.keys] == ["2025-06-01T00:00:00Z"] * 2
    (entry,) = store.audit()
    assert entry["action"] == "import" and "2 keys" in entry["reason"]
    assert keys_file.read_bytes() == original  # left as it was
    store.close()

    more = old_keys_file(keys_file, ("ops", "admin"), ("late", "admin"))  # the old file changes later
    store = start(store_url, tmp_path, keys_file)
    ring = KeyRing(store, poll_s=0)
    assert ring.lookup(more["late"]) is None and ring.lookup(more["ops"]) is None
    assert ring.lookup(made["ops"]).name == "ops"
    assert [e["action"] for e in store.audit()] == ["import"]
    store.close()


def test_revoked_imported_keys_stay_revoked_at_the_next_start(store_url, tmp_path):
    """Every imported key revoked leaves a store with no key and no pointer, yet not an empty one: the
    old file, still there, must not bring them back."""
    keys_file = tmp_path / "api_keys.json"
    made = old_keys_file(keys_file, ("leaked", "admin"))
    store = start(store_url, tmp_path, keys_file)
    KeyStore(store).revoke("leaked")
    store.close()
    store = start(store_url, tmp_path, keys_file)
    assert store.keys() == [] and KeyRing(store, poll_s=0).lookup(made["leaked"]) is None
    assert [e["action"] for e in store.audit()] == ["revoke_key", "import"]
    store.close()


def test_an_old_keys_file_is_not_imported_into_a_store_in_use(store, tmp_path):
    KeyStore(store).create("ops", "admin")
    keys_file = tmp_path / "api_keys.json"
    made = old_keys_file(keys_file, ("old", "admin"))
    assert import_files(store, tmp_path / "none", keys_file) is False
    assert [k["name"] for k in store.keys()] == ["ops"] and KeyRing(store, poll_s=0).lookup(made["old"]) is None
    keys_file.write_text("{ broken")  # not even read once the store is in use
    assert import_files(store, tmp_path / "none", keys_file) is False


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"),
    ("[" * 100_000, "not valid JSON: nested too deeply"),
    ("[]", 'a "keys" list'),
    ('{"keys": [{"name": "a"}]}', "entry 0: expected exactly"),
    ('{"keys": [{"name": "a b", "role": "admin", "created_at": "", "sha256": "' + "0" * 64 + '"}]}',
     "invalid name 'a b'"),
    ('{"keys": [{"name": "a", "role": "root", "created_at": "", "sha256": "' + "0" * 64 + '"}]}', "invalid role"),
    ('{"keys": [{"name": "a", "role": "admin", "created_at": "", "sha256": "xyz"}]}', "64 lower-case hex"),
    ('{"keys": [{"name": "a", "role": "admin", "created_at": "", "sha256": "' + "0" * 64 + '"},'
     ' {"name": "a", "role": "admin", "created_at": "", "sha256": "' + "1" * 64 + '"}]}', "duplicate name"),
])
def test_a_malformed_old_keys_file_is_refused_with_the_reason_and_nothing_imported(store_url, tmp_path, content,
                                                                                      message):
    keys_file = tmp_path / "api_keys.json"
    keys_file.write_text(content)
    with pytest.raises(LegacyFileError, match=message) as info:
        start(store_url, tmp_path, keys_file)
    assert str(keys_file) in str(info.value) and "\n" not in str(info.value)
    assert info.value.setting == "TAGIFAI_API_KEYS_FILE"
    store = Store(store_url)
    assert store.is_empty() and store.keys() == [] and store.audit() == []
    store.close()


def test_an_unreadable_old_keys_file_is_refused(store_url, tmp_path):
    keys_file = tmp_path / "api_keys.json"
    keys_file.mkdir()  # unreadable as a file, for root too (a chmod would not stop root)
    with pytest.raises(LegacyFileError, match=f"keys file {keys_file} cannot be read: Is a directory"):
        start(store_url, tmp_path, keys_file)
