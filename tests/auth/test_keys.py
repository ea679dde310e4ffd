"""The key store: hashing, the file and its atomic writes, and the per-worker view that follows changes."""

from __future__ import annotations

import json
import logging
import stat
import threading

import pytest

from tagifai_api.auth import keys
from tagifai_api.auth.keys import KeyFileError, KeyRing, KeyStore, KeyStoreError


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path):
    return tmp_path / "conf" / "api_keys.json"


def test_keys_are_random_prefixed_and_carry_256_bits():
    made = {keys.generate_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert key.startswith(keys.PREFIX)
        body = key[len(keys.PREFIX):]
        assert len(body) == 43 and set(body) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_hash_is_sha256_hex():
    assert keys.hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_create_stores_only_a_hash_in_a_private_file(path):
    store = KeyStore(path)
    key = store.create("ci", "predict")
    raw = path.read_text()
    assert key not in raw
    (entry,) = json.loads(raw)["keys"]
    assert entry["name"] == "ci" and entry["role"] == "predict"
    assert entry["sha256"] == keys.hash_key(key)
    assert entry["created_at"].endswith("Z")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".api_keys.json.") and
            not p.name.endswith(".lock")] == []  # no temporary file left behind


def test_each_write_replaces_the_file_whole(path):
    store = KeyStore(path)
    store.create("a", "predict")
    inode = path.stat().st_ino
    store.create("b", "admin")
    assert path.stat().st_ino != inode  # a new file renamed over the old one, never edited in place
    assert [k.name for k in store.list()] == ["a", "b"]


@pytest.mark.parametrize(("name", "role", "message"), [
    ("dup", "predict", "exists already"),
    ("bad name", "predict", "invalid key name"),
    ("", "predict", "invalid key name"),
    ("x" * 65, "predict", "invalid key name"),
    ("ok", "root", "invalid role"),
])
def test_create_refuses_bad_or_duplicate_names_and_roles(path, name, role, message):
    store = KeyStore(path)
    store.create("dup", "admin")
    with pytest.raises(KeyStoreError, match=message):
        store.create(name, role)
    assert [k.name for k in store.list()] == ["dup"]


def test_revoke_removes_one_and_names_the_others_when_unknown(path):
    store = KeyStore(path)
    store.create("a", "predict")
    store.create("b", "admin")
    assert store.revoke("a").name == "a"
    with pytest.raises(KeyStoreError, match="no key named 'a'; keys: b"):
        store.revoke("a")


def test_concurrent_creates_lose_nothing(path):
    store = KeyStore(path)
    threads = [threading.Thread(target=store.create, args=(f"k{i}", "predict")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(k.name for k in store.list()) == sorted(f"k{i}" for i in range(20))


def test_missing_file_means_no_keys(path):
    assert keys.read_keys(path) == ()
    assert KeyRing(path).keys == ()


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not valid JSON"),
    ("[" * 100_000, "not valid JSON: nested too deeply"),
    ("[]", 'a "keys" list'),
    ('{"keys": [{"name": "a"}]}', "entry 0: expected exactly"),
    ('{"keys": [{"name": "a", "role": "root", "created_at": "", "sha256": "' + "0" * 64 + '"}]}', "invalid role"),
    ('{"keys": [{"name": "a", "role": "admin", "created_at": "", "sha256": "xyz"}]}', "64 lower-case hex"),
    ('{"keys": [{"name": "a", "role": "admin", "created_at": "", "sha256": "' + "0" * 64 + '"},'
     ' {"name": "a", "role": "admin", "created_at": "", "sha256": "' + "1" * 64 + '"}]}', "duplicate name"),
])
def test_malformed_file_is_refused_with_the_reason(path, content, message):
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(KeyFileError, match=message) as info:
        KeyRing(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_file_is_refused(path):
    path.mkdir(parents=True)  # unreadable as a file, for root too (a chmod would not stop root)
    with pytest.raises(KeyFileError, match=f"keys file {path} cannot be read: Is a directory"):
        KeyRing(path)


def test_lookup_finds_the_key_and_nothing_else(path):
    store = KeyStore(path)
    admin = store.create("ops", "admin")
    reader = store.create("reader", "predict")
    ring = KeyRing(path)
    assert ring.lookup(admin).name == "ops"
    assert ring.lookup(reader).role == "predict"
    assert ring.lookup(admin[:-1]) is None
    assert ring.lookup(keys.hash_key(admin)) is None  # the stored hash is not a key
    assert ring.lookup("x" * 10_000) is None
    assert ring.has_role("admin") and ring.has_role("predict")



def test_lookup_compares_the_whole_hash(path):
    """A stored hash equal to a key's in all but its last hex digit is another key's: it must neither
    answer for the key nor, listed after the real entry, take its place with a stronger role."""
    key = keys.generate_key()
    digest = keys.hash_key(key)
    near = digest[:-1] + ("1" if digest[-1] == "0" else "0")
    impostor = keys.ApiKey("impostor", "admin", "2026-01-01T00:00:00Z", near)
    keys.write_keys(path, [impostor])
    assert KeyRing(path).lookup(key) is None
    keys.write_keys(path, [keys.ApiKey("reader", "predict", "2026-01-01T00:00:00Z", digest), impostor])
    assert KeyRing(path).lookup(key) == keys.ApiKey("reader", "predict", "2026-01-01T00:00:00Z", digest)

def test_lookup_compares_in_constant_time(path, monkeypatch):
    store = KeyStore(path)
    key = store.create("a", "admin")
    store.create("b", "predict")
    ring = KeyRing(path)
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


def test_ring_follows_the_file_at_most_once_per_interval(path):
    store = KeyStore(path)
    first = store.create("a", "predict")
    clock = Clock()
    ring = KeyRing(path, check_interval_s=1.0, clock=clock)
    second = store.create("b", "admin")
    assert ring.lookup(second) is None  # not due yet
    clock.now += 1.0
    assert ring.lookup(second).name == "b"
    store.revoke("a")
    clock.now += 0.5
    assert ring.lookup(first) is not None
    clock.now += 0.5
    assert ring.lookup(first) is None
    assert [k.name for k in ring.keys] == ["b"]


def test_ring_keeps_the_last_good_keys_and_logs_once(path):
    store = KeyStore(path)
    key = store.create("a", "admin")
    clock = Clock()
    ring = KeyRing(path, clock=clock)
    path.write_text("{ broken")
    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append
    logging.getLogger("tagifai_api.auth").addHandler(handler)
    try:
        for _ in range(5):
            clock.now += 1.0
            assert ring.lookup(key).name == "a"
    finally:
        logging.getLogger("tagifai_api.auth").removeHandler(handler)
    assert len(errors) == 1 and "not valid JSON" in errors[0].getMessage()
    assert "keeping the 1 keys" in errors[0].getMessage()
    keys.write_keys(path, [])  # a valid file again (with no keys): followed at once
    clock.now += 1.0
    assert ring.lookup(key) is None


def test_deleting_the_file_revokes_every_key(path):
    key = KeyStore(path).create("a", "admin")
    clock = Clock()
    ring = KeyRing(path, clock=clock)
    path.unlink()
    clock.now += 1.0
    assert ring.lookup(key) is None


def test_a_lenient_ring_starts_with_no_keys_from_a_broken_file_and_follows_its_fix(path, caplog):
    store = KeyStore(path)
    key = store.create("a", "admin")
    good = path.read_bytes()
    path.write_text("{ broken")
    with pytest.raises(KeyFileError):
        KeyRing(path)
    clock = Clock()
    with caplog.at_level(logging.ERROR, logger="tagifai_api.auth"):
        ring = KeyRing(path, clock=clock, strict=False)
        for _ in range(3):
            clock.now += 1.0
            assert ring.lookup(key) is None and not ring.has_role("predict")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "not valid JSON" in errors[0] and "no keys" in errors[0]
    keys.write_keys(path, keys._parse(path, good))
    clock.now += 1.0
    assert ring.lookup(key).name == "a"
