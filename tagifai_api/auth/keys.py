"""API keys: generation, hashing, their place in the store, and each worker's copy of them.

No Flask: the command line uses this too. The store (:mod:`tagifai_api.store.database`) holds, per
key, its name, role, creation time and the SHA-256 of the key; never the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from tagifai_api.store.database import ConflictError, NotFoundError, Store, StoreError

log = logging.getLogger("tagifai_api.auth")

#: roles, weakest first: each may do what the ones before it may
ROLES = ("predict", "admin")
#: what every key starts with, so secret scanners and people recognise one
PREFIX = "tagifai_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: longer than any key this module makes; a longer header is not hashed at all
_MAX_KEY_LENGTH = 256


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


class KeyStore:
    """Key changes (the ``keys`` command): create, list, revoke; each one recorded in the audit log."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self) -> tuple[ApiKey, ...]:
        return tuple(ApiKey(**row) for row in self.store.keys())

    def create(self, name: str, role: str) -> str:
        """Store a new key under a new name and return it: the only time it is ever shown."""
        check_name(name)
        check_role(role)
        key = generate_key()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        try:
            self.store.add_key(name, role, created, hash_key(key))
        except ConflictError as exc:
            raise KeyStoreError(str(exc)) from None
        return key

    def revoke(self, name: str) -> ApiKey:
        """Remove the key called ``name``; return what was removed."""
        try:
            return ApiKey(**self.store.revoke_key(name))
        except NotFoundError as exc:
            raise KeyStoreError(str(exc)) from None


def _snapshot_keys(rows: object) -> tuple[ApiKey, ...] | None:
    """The keys of a host's snapshot (:meth:`Store.last_known`); None when there is none or it is not
    a list of whole keys."""
    fields = {f.name for f in dataclasses.fields(ApiKey)}
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(r) == fields and
                                             all(isinstance(v, str) for v in r.values()) for r in rows):
        return None
    return tuple(ApiKey(**row) for row in rows if row["role"] in ROLES)


class KeyRing:
    """A worker's copy of the keys in the store, followed by a background thread.

    The thread polls the store's change counter every ``poll_s`` and re-reads the keys when it
    moved, so a new or revoked key takes effect in every worker within about ``poll_s``, and a
    request never waits for the store: it checks the keys this worker holds. A store that cannot
    be read leaves the last keys in force and is logged once per distinct failure; a ring that
    starts while it cannot be read holds the keys a worker of this host last read from it
    (:meth:`Store.remember`), or none.
    """

    def __init__(self, store: Store, poll_s: float = 1.0) -> None:
        self.store = store
        self.poll_s = poll_s
        self._keys: tuple[ApiKey, ...] = ()
        self._seen: int | None = None
        self._failure: str | None = None
        self._stop = threading.Event()
        self.refresh()
        self._thread: threading.Thread | None = None
        if poll_s > 0:
            self._thread = threading.Thread(target=self._watch, name="tagifai-keys-watcher", daemon=True)
            self._thread.start()

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        """The keys in force."""
        return self._keys

    def has_role(self, role: str) -> bool:
        """Whether any key in force has this role or a stronger one."""
        return any(role_allows(k.role, role) for k in self._keys)

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key matching ``key``, or None.

        Every stored hash is compared, each in constant time, so the answer's timing says nothing
        about how close a guess came or which entry matched.
        """
        if len(key) > _MAX_KEY_LENGTH:
            return None
        digest = hash_key(key).encode()
        found = None
        for entry in self._keys:
            if hmac.compare_digest(digest, entry.sha256.encode()):
                found = entry
        return found

    def refresh(self) -> None:
        """Re-read the keys if the store changed since the last read."""
        try:
            generation = self.store.generation()
            rows = self.store.keys() if generation != self._seen else None
        except StoreError as exc:
            self._failed(exc)
            return
        if self._failure is not None:
            log.info("the state store answers again; following its keys")
            self._failure = None
        if rows is None:
            return
        keys = tuple(ApiKey(**row) for row in rows)
        if keys != self._keys or self._seen is None:
            # the first read too: what this host keeps must never be older than what it last read,
            # or a worker started in an outage would accept a key revoked since
            self.store.remember("keys", rows)  # hashes only, like the store itself
        if self._seen is not None and keys != self._keys:
            log.info("keys re-read from the store: %d keys", len(keys))
        self._seen = generation
        self._keys = keys

    def _failed(self, exc: StoreError) -> None:
        """Keep the keys in force (at start, those this host last read), and log each distinct failure once."""
        if self._seen is None and self._failure is None:  # a worker started during an outage
            kept = _snapshot_keys(self.store.last_known("keys"))
            self._keys = kept or ()
            if kept is None:
                log.error("%s; starting with no keys (every key refused) until it answers", exc)
            else:
                log.error("%s; starting with the %d keys this host last read from it", exc, len(kept))
        elif str(exc) != self._failure:
            log.error("%s; keeping the %d keys read before", exc, len(self._keys))
        self._failure = str(exc)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("reading the keys failed")

    def close(self) -> None:
        """Stop the thread and wait for it: a poll in progress would otherwise hand a connection back
        to a store closed meanwhile, where nothing ever closes it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
