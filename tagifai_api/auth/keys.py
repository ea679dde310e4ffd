"""API keys: generation, hashing, the keys file, and the per-worker view of it that follows changes.

Standard library only and no Flask: the command line and the Gunicorn master read the file too.

The file (``TAGIFAI_API_KEYS_FILE``) holds, per key, its name, role, creation time and the SHA-256
of the key; never the key. It is replaced atomically (a temporary file in the same directory, mode
0600, fsynced, then renamed over the old one), so a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from tagifai_api.store import files

log = logging.getLogger("tagifai_api.auth")

#: roles, weakest first: each may do what the ones before it may
ROLES = ("predict", "admin")
#: what every key starts with, so secret scanners and people recognise one
PREFIX = "tagifai_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: longer than any key this module makes; a longer header is not hashed at all
_MAX_KEY_LENGTH = 256


class KeyFileError(ValueError):
    """The keys file cannot be read or is not a valid keys file; the message says which and why."""


class KeyStoreError(ValueError):
    """A key operation that cannot be done (a duplicate or unknown name, a bad role)."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key: never the key itself, only its hash."""

    name: str
    role: str
    created_at: str
    sha256: str


def generate_key() -> str:
    """A new key: the prefix and 32 random bytes (256 bits), URL-safe base64."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 of the key, in hex.

    A plain fast hash is the right tool here, unlike for passwords: a key holds 256 random bits, so
    a leaked file cannot be brute-forced whatever the hash's speed, and slow password hashes
    (bcrypt, scrypt, Argon2) exist only to make guessing low-entropy secrets expensive. Being fast
    (about a microsecond) keeps the check cheap on every request.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    """Whether a key of ``role`` may do what needs ``needed``."""
    return ROLES.index(role) >= ROLES.index(needed)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise KeyStoreError(f"invalid key name {name!r}: 1-64 of letters, digits, '.', '_', '-', "
                            "starting with a letter or digit")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise KeyStoreError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")


def _parse(path: Path, raw: bytes) -> tuple[ApiKey, ...]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise KeyFileError(f"keys file {path} is not valid JSON: {exc}") from None
    except RecursionError:  # the standard parser recurses once per nesting level
        raise KeyFileError(f"keys file {path} is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFileError(f'keys file {path} must be a JSON object with a "keys" list')
    keys: list[ApiKey] = []
    names: set[str] = set()
    for i, entry in enumerate(doc["keys"]):
        where = f"keys file {path}, entry {i}"
        if not isinstance(entry, dict) or set(entry) != {"name", "role", "created_at", "sha256"}:
            raise KeyFileError(f"{where}: expected exactly name, role, created_at and sha256")
        if not all(isinstance(v, str) for v in entry.values()):
            raise KeyFileError(f"{where}: every field must be a string")
        try:
            check_name(entry["name"])
            check_role(entry["role"])
        except KeyStoreError as exc:
            raise KeyFileError(f"{where}: {exc}") from None
        if not _HEX64.match(entry["sha256"]):
            raise KeyFileError(f"{where}: sha256 must be 64 lower-case hex digits")
        if entry["name"] in names:
            raise KeyFileError(f"{where}: duplicate name {entry['name']!r}")
        names.add(entry["name"])
        keys.append(ApiKey(**entry))
    return tuple(keys)


def read_keys(path: Path) -> tuple[ApiKey, ...]:
    """The keys in ``path``; no file means no keys. Raises :class:`KeyFileError` for anything else."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise KeyFileError(f"keys file {path} cannot be read: {exc.strerror}") from None
    return _parse(path, raw)


def write_keys(path: Path, keys: tuple[ApiKey, ...] | list[ApiKey]) -> None:
    """Replace the file atomically with these keys, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"keys": [asdict(k) for k in keys]}, indent=2).encode() + b"\n"
    files.write_atomic(path, body, mode=0o600)


class KeyStore:
    """Edits of the keys file (the ``keys`` command), one at a time across processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        """The current keys, under an exclusive lock; what the block leaves in the list is written."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with files.locked(self.path.parent / f".{self.path.name}.lock", mode=0o600):
                keys = list(read_keys(self.path))
                before = list(keys)
                yield keys
                if keys != before:
                    write_keys(self.path, keys)
        except OSError as exc:
            raise KeyFileError(f"keys file {self.path} cannot be written: {exc.strerror}") from None

    def list(self) -> tuple[ApiKey, ...]:
        return read_keys(self.path)

    def create(self, name: str, role: str) -> str:
        """Store a new key under a new name and return it: the only time it is ever shown."""
        check_name(name)
        check_role(role)
        key = generate_key()
        with self._locked() as keys:
            if any(k.name == name for k in keys):
                raise KeyStoreError(f"a key named {name!r} exists already; revoke it first or pick another name")
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            keys.append(ApiKey(name, role, created, hash_key(key)))
        return key

    def revoke(self, name: str) -> ApiKey:
        """Remove the key called ``name``; return what was removed."""
        with self._locked() as keys:
            for i, k in enumerate(keys):
                if k.name == name:
                    return keys.pop(i)
            known = ", ".join(k.name for k in keys) or "none"
            raise KeyStoreError(f"no key named {name!r}; keys: {known}")


class KeyRing:
    """A worker's view of the keys file, re-read when the file changes.

    The file's identity (inode, size, modification time) is looked at, at most once every
    ``check_interval_s``, by whichever request comes first; other requests meanwhile use the keys
    they have. So a new or revoked key takes effect in every worker about a second after the file
    changes, and a request costs a ``stat`` at most once a second per worker. A file that turns
    unreadable or invalid while running leaves the last good keys in force and is logged once per
    change of the file. At construction it raises :class:`KeyFileError`, unless ``strict`` is false:
    then it starts with no keys (every key refused) and logs why, until the file is fixed. That is
    for a Gunicorn worker, whose master refused a broken file at start: a worker started later (a
    crash, recycling) must not take the whole server down over a file broken since.
    """

    def __init__(self, path: Path, check_interval_s: float = 1.0, clock=time.monotonic,
                 strict: bool = True) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._failed_signature: tuple | None = None
        try:
            self._keys = read_keys(self.path)
        except KeyFileError as exc:
            if strict:
                raise
            self._keys = ()
            self._failed_signature = self._signature
            log.error("%s; starting with no keys (every key refused) until it is fixed", exc)
        self._next_check = clock() + check_interval_s

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """The keys in force, after a re-read if the file changed and one is due."""
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            try:  # one thread re-reads; the others go on with the keys they have
                self._refresh()
            finally:
                self._lock.release()
        return self._keys

    def has_role(self, role: str) -> bool:
        """Whether any key in force has this role or a stronger one."""
        return any(role_allows(k.role, role) for k in self.keys)

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key matching ``key``, or None.

        Every stored hash is compared, each in constant time, so the answer's timing says nothing
        about how close a guess came or which entry matched.
        """
        if len(key) > _MAX_KEY_LENGTH:
            return None
        digest = hash_key(key).encode()
        found = None
        for entry in self.keys:
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        return found

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return ("error", exc.errno)
        return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _refresh(self) -> None:
        self._next_check = self._clock() + self.check_interval_s
        signature = self._stat()
        if signature == self._signature:
            return
        try:
            keys = read_keys(self.path)
        except KeyFileError as exc:
            if signature != self._failed_signature:
                self._failed_signature = signature
                log.error("%s; keeping the %d keys read before", exc, len(self._keys))
            return
        self._signature = signature
        self._failed_signature = None
        self._keys = keys
        log.info("keys file re-read: %d keys", len(keys))
