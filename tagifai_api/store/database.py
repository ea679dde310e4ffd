"""The store: every piece of the service's mutable state behind one object, on SQLAlchemy Core.

An embedded SQLite file by default (WAL, so readers never wait for the writer), PostgreSQL when
replicas share the state. Each write runs in one transaction that also bumps the ``generation``
row, so a worker polling that one row learns of any change made anywhere. Model versions are not
in here: they stay immutable directories beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from tagifai_api.store import tables as t
from tagifai_api.store.files import write_atomic

log = logging.getLogger("tagifai_api.store")
# Alembic's own INFO lines (plugin set-up, its context, each migration step) on every run of every
# command: the store logs the one line an upgrade is worth itself
logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: the newest migration's revision, so a start on an up-to-date store need not load Alembic (a test
#: checks it is Alembic's head)
SCHEMA_HEAD = "0005"
#: older entries are dropped: a rollback goes back at most this far
HISTORY_LIMIT = 50
#: a write waits this long for another writer (SQLite) or a connection (PostgreSQL) before failing
_BUSY_TIMEOUT_S = 5
_CONNECT_TIMEOUT_S = 2
#: the PostgreSQL advisory lock migrations take ("tagifai" in ASCII)
_MIGRATION_LOCK = 0x746167696661
#: the one feedback writes take, one at a time ("feedbk")
_FEEDBACK_LOCK = 0x666565646266


#: what one text of the prediction log holds (a request's row keeps them in this order)
LOG_ITEM = ("predicted", "confidence", "low_confidence", "shadow_predicted", "text_length", "tokens",
            "unknown_tokens", "text_hash", "text")
#: the columns of an exported text: the request's, then the text's
LOG_COLUMNS = ("at", "request_id", "position", "model_version", "shadow_version", *LOG_ITEM)
# PostgreSQL takes the rows as one JSON document it takes apart itself (one round trip, in C).
_BULK_LOG_POSTGRESQL = ("INSERT INTO prediction_log (at, request_id, model_version, texts, shadow_version, items) "
                        "SELECT (r ->> 0)::float8, r ->> 1, r ->> 2, (r ->> 3)::int, r ->> 4, (r -> 5)::text "
                        "FROM json_array_elements(%s::json) AS r")
_INSERT_LOG = ("INSERT INTO prediction_log (at, request_id, model_version, texts, shadow_version, items) "
               "VALUES (?, ?, ?, ?, ?, ?)")

#: a version's newest logged texts, each as (request id, at, position, predicted, confidence, tokens,
#: unknown tokens): the database takes the items apart, so a text kept in ``texts`` mode never travels
#: (PostgreSQL as jsonb: parsed once, where json would be parsed again by each ->>; 3.5x faster with
#: 2,000-character texts kept)
_WINDOW = {
    "sqlite": "SELECT p.id, p.at, j.key, j.value ->> 0, j.value ->> 1, j.value ->> 5, j.value ->> 6 "
              "FROM prediction_log AS p, json_each(p.items) AS j "
              "WHERE p.model_version = ? AND p.id BETWEEN ? AND ? ORDER BY p.id DESC, j.key",
    "postgresql": "SELECT p.id, p.at, e.ord, e.item ->> 0, (e.item ->> 1)::float8, (e.item ->> 5)::int, "
                  "(e.item ->> 6)::int FROM prediction_log AS p "
                  "CROSS JOIN LATERAL jsonb_array_elements(p.items::jsonb) WITH ORDINALITY AS e(item, ord) "
                  "WHERE p.model_version = %s AND p.id BETWEEN %s AND %s ORDER BY p.id DESC, e.ord",
}


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or answered with an error; retry later."""


class StoreSchemaError(StoreError):
    """The database's schema does not match this code (newer, or not yet upgraded)."""


class ConflictError(StoreError):
    """The state does not allow that (no history to roll back to, a duplicate key name)."""


class NotFoundError(StoreError):
    """No such entry (a key name)."""


Verifier = Callable[[str], object]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sqlite_file(url: sa.URL) -> Path | None:
    database = url.database
    return Path(database) if url.get_backend_name() == "sqlite" and database and database != ":memory:" else None


def _wal(cursor) -> None:
    """WAL mode, which the file keeps once set. Switching a new file takes a lock SQLite does not wait
    for (two processes opening a new store at once: one got "database is locked"), so it is retried
    for as long as a write would wait."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _create_private(path: Path) -> None:
    """Create a new SQLite file (and its directory) readable by its owner only: it holds the keys'
    hashes and the audit log, as the keys file did (0600). SQLite gives its -wal and -shm files the
    database's own mode. A place that cannot hold it is :class:`StoreUnavailableError`, in one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if not path.parent.is_dir():
            raise StoreUnavailableError(f"the state store is unavailable (cannot create {path}: "
                                        f"{path.parent} is not a directory)") from None
    except OSError as exc:
        raise StoreUnavailableError(f"the state store is unavailable (cannot create {path}: {exc.strerror})") from None


def _make_engine(url: str) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            _create_private(path)
        engine = sa.create_engine(parsed, connect_args={"timeout": _BUSY_TIMEOUT_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            # the driver's own transaction handling is off: BEGIN is ours, and IMMEDIATE, so a write
            # transaction takes the write lock when it starts instead of failing half-way
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            _wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_S * 1000}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection) -> None:
            write = connection.get_execution_options().get("tagifai_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args = {"connect_timeout": _CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=4, pool_timeout=_BUSY_TIMEOUT_S,
                            connect_args=connect_args)


class Store:
    """The service's state in one database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///var/tagifai.db``, ``postgresql+psycopg://user@host/db``).
        on_error: told the operation's name whenever the database fails (the metrics count them).
    """

    def __init__(self, url: str, on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.on_error = on_error
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return sa.make_url(self.url).get_backend_name()

    def describe(self) -> str:
        """The URL without its password, for logs and answers."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """This process's engine: a forked worker never shares its parent's connections."""
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        self._engine.dispose(close=False)  # the parent's connections stay the parent's
                    self._engine = _make_engine(self.url)
                    self._pid = pid
        return self._engine

    def close(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None

    @contextmanager
    def _connect(self, operation: str, write: bool = False) -> Iterator[Connection]:
        """A connection in a transaction; database failures become :class:`StoreUnavailableError`."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(tagifai_write=True)
                with conn.begin():
                    yield conn
        except (StoreError, IntegrityError):
            raise
        except (OperationalError, DBAPIError) as exc:
            if self.on_error is not None:
                self.on_error(operation)
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StoreUnavailableError(f"the state store is unavailable ({reason})") from None

    # -- this host's copy of what was read last ---------------------------------------------------

    def _snapshot_path(self, name: str) -> Path:
        """Beside an SQLite file (its directory is this host's and the service's already); else in the
        temporary directory, under a name only this store and ``name`` give."""
        digest = hashlib.sha256(f"{self.url}|{name}".encode()).hexdigest()[:16]
        database = _sqlite_file(sa.make_url(self.url))
        directory = database.parent if database is not None else Path(tempfile.gettempdir())
        return directory / f".tagifai-last-read-{digest}.json"

    def remember(self, name: str, value: object) -> None:
        """Keep ``value`` (JSON) on this host, readable by its owner only, as what was read last:
        a worker that starts while the database is down serves from it instead of not at all.
        Best effort: a failure only logs."""
        try:
            write_atomic(self._snapshot_path(name), json.dumps(value), mode=0o600)
        except OSError as exc:
            log.warning("cannot keep the state last read (%s): %s", name, exc)

    def last_known(self, name: str) -> object | None:
        """What :meth:`remember` kept under ``name`` on this host, if anything.

        Only a file of this user's that no one else may write counts: the temporary directory is
        everyone's, and a file planted there under the expected name (a key hash of someone's
        choosing) must not become a key a worker accepts."""
        path = self._snapshot_path(name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                info = os.fstat(fh.fileno())
                if info.st_uid != os.geteuid() or info.st_mode & 0o022:
                    log.warning("ignoring %s: not this user's own file (owner uid %d, mode %o)", path, info.st_uid,
                                info.st_mode & 0o777)
                    return None
                return json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError):
            return None

    # -- schema ------------------------------------------------------------------------------------

    @staticmethod
    def _revision(conn: Connection) -> str | None:
        """The schema's revision as Alembic records it, read without importing Alembic: every worker
        checks it at start, and Alembic with Mako and Pygments is 50 modules and 50,000 objects each
        worker would keep (and its garbage collector walk) for nothing."""
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def _alembic(self, conn: Connection):
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def revisions(self) -> tuple[str | None, str]:
        """``(the database's revision, this code's head)``."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        with self._connect("schema") as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            head = ScriptDirectory.from_config(self._alembic(conn)).get_current_head()
        return current, head

    def _known(self, revision: str) -> bool:
        from alembic.script import ScriptDirectory
        from alembic.util.exc import CommandError

        with self._connect("schema") as conn:
            script = ScriptDirectory.from_config(self._alembic(conn))
        try:
            return script.get_revision(revision) is not None
        except CommandError:
            return False

    def upgrade(self) -> tuple[str | None, str]:
        """Bring the schema to this code's head; returns ``(before, after)``. Refuses a newer one."""
        with self._connect("schema") as conn:
            current = self._revision(conn)
        if current == SCHEMA_HEAD:
            return current, current
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        current, head = self.revisions()
        if current is not None and not self._known(current):
            raise StoreSchemaError(f"the state store {self.describe()} is at schema {current}, newer than this "
                                   f"code ({head}); run the newer release, or restore a matching backup")
        if current != head:
            with self._connect("upgrade", write=True) as conn:
                if conn.dialect.name == "postgresql":
                    # two replicas starting on an empty database: one migrates, the other waits, then
                    # finds nothing to do (SQLite's writers already queue on BEGIN IMMEDIATE)
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                current = MigrationContext.configure(conn).get_current_revision()
                if current != head:
                    command.upgrade(self._alembic(conn), "head")
                    log.info("state store %s upgraded from schema %s to %s", self.describe(), current or "none",
                             head)
        return current, head

    def check(self) -> None:
        """Refuse a schema this code cannot use, in one line that says what to do."""
        with self._connect("schema") as conn:
            if self._revision(conn) == SCHEMA_HEAD:
                return
        current, head = self.revisions()
        if current == head:
            return
        if current is not None and not self._known(current):
            raise StoreSchemaError(f"the state store {self.describe()} is at schema {current}, newer than this "
                                   f"code ({head}); run the newer release, or restore a matching backup")
        raise StoreSchemaError(f"the state store {self.describe()} is at schema {current or 'none'}, this code "
                               f"needs {head}: run `python -m tagifai_api store upgrade`")

    # -- the change counter ------------------------------------------------------------------------

    def generation(self) -> int:
        """How many writes the store has seen; what every worker polls."""
        with self._connect("poll") as conn:
            return int(conn.execute(sa.select(t.generation.c.value).where(t.generation.c.id == 1)).scalar_one())

    @staticmethod
    def _bump(conn: Connection) -> None:
        conn.execute(t.generation.update().where(t.generation.c.id == 1).values(value=t.generation.c.value + 1))

    @staticmethod
    def _audit(conn: Connection, action: str, before: str | None, after: str | None, key_name: str | None,
               reason: str | None) -> None:
        conn.execute(t.audit_log.insert().values(at=_now(), action=action, from_value=before, to_value=after,
                                                 key_name=key_name, reason=reason))

    # -- the registry ------------------------------------------------------------------------------

    @staticmethod
    def _pointer(conn: Connection, name: str, lock: bool = False) -> str | None:
        query = sa.select(t.pointers.c.version).where(t.pointers.c.name == name)
        if lock:
            query = query.with_for_update()
        return conn.execute(query).scalar_one_or_none()

    @staticmethod
    def _set_pointer(conn: Connection, name: str, version: str | None) -> None:
        # both rows exist from the first migration on, so two first writers cannot both insert one
        conn.execute(t.pointers.update().where(t.pointers.c.name == name).values(version=version, changed_at=_now()))

    def pointers(self) -> tuple[str | None, str | None]:
        """``(default, shadow)`` as recorded now."""
        with self._connect("read") as conn:
            rows = dict(conn.execute(sa.select(t.pointers.c.name, t.pointers.c.version)).all())
        return rows.get("default"), rows.get("shadow")

    def history(self) -> list[dict]:
        """Earlier defaults, newest last: ``{"version", "replaced_at"}`` each."""
        with self._connect("read") as conn:
            rows = conn.execute(sa.select(t.default_history.c.version, t.default_history.c.replaced_at)
                                .order_by(t.default_history.c.id)).all()
        return [{"version": v, "replaced_at": at} for v, at in rows]

    @staticmethod
    def _push_history(conn: Connection, version: str) -> None:
        conn.execute(t.default_history.insert().values(version=version, replaced_at=_now()))
        keep = sa.select(t.default_history.c.id).order_by(t.default_history.c.id.desc()).limit(HISTORY_LIMIT)
        conn.execute(t.default_history.delete().where(t.default_history.c.id.not_in(keep.scalar_subquery())))

    def set_default(self, version: str, verifier: Verifier, key_name: str | None = None,
                    reason: str | None = None) -> tuple[str | None, str]:
        """Verify ``version`` (``verifier`` raises to refuse it), then make it the default, keeping the
        one it replaces in the history. Returns ``(previous, new)``; equal when nothing changed."""
        verifier(version)
        with self._connect("set_default", write=True) as conn:
            previous = self._pointer(conn, "default", lock=True)
            if previous == version:
                return previous, version
            if previous is not None:
                self._push_history(conn, previous)
            self._set_pointer(conn, "default", version)
            self._audit(conn, "set_default", previous, version, key_name, reason)
            self._bump(conn)
        return previous, version

    def promote(self, version: str, verifier: Verifier, expect: str | None, key_name: str | None = None,
                reason: str | None = None) -> tuple[str | None, str]:
        """Make ``version`` (verified first) the default as :meth:`set_default` does, but only while the
        default is still ``expect`` (the version it was judged against), and stop shadowing it if it
        was the shadow; recorded as ``promoted``.

        Raises:
            ConflictError: the default changed since the decision was taken; nothing changed.
        """
        verifier(version)
        with self._connect("promote", write=True) as conn:
            previous = self._pointer(conn, "default", lock=True)
            if previous != expect:
                raise ConflictError(f"the default is {previous} now, not {expect}, which {version} was judged "
                                    "against")
            if previous is not None:
                self._push_history(conn, previous)
            self._set_pointer(conn, "default", version)
            if self._pointer(conn, "shadow", lock=True) == version:
                self._set_pointer(conn, "shadow", None)
            self._audit(conn, "promoted", previous, version, key_name, reason)
            self._bump(conn)
        return previous, version

    def record(self, action: str, before: str | None, after: str | None, key_name: str | None = None,
               reason: str | None = None) -> None:
        """Add a decision that changes no pointer to the audit log (a candidate trained, or kept)."""
        with self._connect("audit", write=True) as conn:
            self._audit(conn, action, before, after, key_name, reason)

    def last_default_change(self) -> dict | None:
        """The newest audit entry that changed the default (a switch, rollback, promotion or import)."""
        changes = self.audit(1, ("set_default", "rollback", "promoted", "auto_rollback", "import"))
        return changes[0] if changes else None

    def rollback(self, verifier: Verifier, key_name: str | None = None, reason: str | None = None, *,
                 expect: str | None = None, action: str = "rollback") -> tuple[str | None, str]:
        """Make the newest earlier default the default again (verified first), dropping it from the history.

        Args:
            expect: roll back only while ``expect`` is the default (a decision taken about it).
            action: what the audit log calls it.

        Raises:
            ConflictError: there is no earlier default, or the default is not ``expect``.
        """
        with self._connect("rollback", write=True) as conn:
            current = self._pointer(conn, "default", lock=True)
            if expect is not None and current != expect:
                raise ConflictError(f"the default is {current} now, not {expect}")
            rows = conn.execute(sa.select(t.default_history.c.id, t.default_history.c.version)
                                .order_by(t.default_history.c.id.desc())).all()
            stale = [i for i, v in rows]
            while rows and rows[0][1] == current:  # an entry equal to the default is no step back
                rows.pop(0)
            if not rows:
                raise ConflictError("no earlier default to roll back to: the history is empty")
            entry, target = rows[0]
            verifier(target)
            dropped = stale[: stale.index(entry) + 1]
            conn.execute(t.default_history.delete().where(t.default_history.c.id.in_(dropped)))
            self._set_pointer(conn, "default", target)
            self._audit(conn, action, current, target, key_name, reason)
            self._bump(conn)
        return current, target

    def set_shadow(self, version: str, verifier: Verifier, key_name: str | None = None,
                   reason: str | None = None, *, action: str = "set_shadow") -> str | None:
        """Verify ``version`` and make it the shadow; returns the shadow it replaced."""
        verifier(version)
        with self._connect("set_shadow", write=True) as conn:
            previous = self._pointer(conn, "shadow", lock=True)
            self._set_pointer(conn, "shadow", version)
            self._audit(conn, action, previous, version, key_name, reason)
            self._bump(conn)
        return previous

    def clear_shadow(self, key_name: str | None = None, reason: str | None = None) -> str | None:
        """Stop shadow scoring; returns the shadow it removed (``None`` when there was none)."""
        with self._connect("clear_shadow", write=True) as conn:
            previous = self._pointer(conn, "shadow", lock=True)
            if previous is not None:
                self._set_pointer(conn, "shadow", None)
                self._audit(conn, "clear_shadow", previous, None, key_name, reason)
                self._bump(conn)
        return previous

    # -- API keys ----------------------------------------------------------------------------------

    def keys(self) -> list[dict]:
        """Every key: ``{"name", "role", "created_at", "sha256"}``, oldest first."""
        with self._connect("read") as conn:
            rows = conn.execute(sa.select(t.api_keys.c.name, t.api_keys.c.role, t.api_keys.c.created_at,
                                          t.api_keys.c.sha256).order_by(t.api_keys.c.created_at,
                                                                        t.api_keys.c.name)).mappings().all()
        return [dict(r) for r in rows]

    def add_key(self, name: str, role: str, created_at: str, sha256: str, key_name: str | None = None) -> None:
        """Store a key's hash under a new name.

        Raises:
            ConflictError: a key of that name exists already.
        """
        try:
            with self._connect("add_key", write=True) as conn:
                conn.execute(t.api_keys.insert().values(name=name, role=role, created_at=created_at, sha256=sha256))
                self._audit(conn, "create_key", None, f"{name} ({role})", key_name, None)
                self._bump(conn)
        except IntegrityError:
            raise ConflictError(f"a key named {name!r} exists already; revoke it first or pick another name") from None

    def revoke_key(self, name: str, key_name: str | None = None) -> dict:
        """Delete the key called ``name``; returns what was removed.

        Raises:
            NotFoundError: there is no such key (the message lists the names there are).
        """
        with self._connect("revoke_key", write=True) as conn:
            row = conn.execute(sa.select(t.api_keys).where(t.api_keys.c.name == name)).mappings().first()
            if row is None:
                known = conn.execute(sa.select(t.api_keys.c.name).order_by(t.api_keys.c.name)).scalars().all()
                raise NotFoundError(f"no key named {name!r}; keys: {', '.join(known) or 'none'}")
            conn.execute(t.api_keys.delete().where(t.api_keys.c.name == name))
            self._audit(conn, "revoke_key", f"{name} ({row['role']})", None, key_name, None)
            self._bump(conn)
        return dict(row)

    # -- the audit log -----------------------------------------------------------------------------

    def audit(self, limit: int = 100, actions: tuple[str, ...] | None = None) -> list[dict]:
        """The newest ``limit`` changes, newest first: ``{"at", "action", "from", "to", "key_name", "reason"}``."""
        query = sa.select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
        if actions:
            query = query.where(t.audit_log.c.action.in_(actions))
        with self._connect("read") as conn:
            rows = conn.execute(query).mappings().all()
        return [{"at": r["at"], "action": r["action"], "from": r["from_value"], "to": r["to_value"],
                 "key_name": r["key_name"], "reason": r["reason"]} for r in rows]

    def is_empty(self) -> bool:
        """No pointer, no history, no key and no change ever recorded: a store a legacy import may fill.

        The audit log counts: a store whose keys were all revoked is not empty, or the next start
        would import the old keys file again and bring the revoked keys back."""
        with self._connect("read") as conn:
            recorded = conn.execute(sa.select(sa.func.count()).select_from(t.pointers)
                                    .where(t.pointers.c.version.is_not(None))).scalar_one()
            return not recorded and not any(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                                            for table in (t.default_history, t.api_keys, t.audit_log))

    def import_state(self, default: str | None, shadow: str | None, history: list[dict], keys: list[dict]) -> None:
        """Fill an empty store in one transaction (from an install's old files)."""
        with self._connect("import", write=True) as conn:
            if default is not None:
                self._set_pointer(conn, "default", default)
            if shadow is not None:
                self._set_pointer(conn, "shadow", shadow)
            for entry in history[-HISTORY_LIMIT:]:
                conn.execute(t.default_history.insert().values(version=entry["version"],
                                                               replaced_at=entry.get("replaced_at") or _now()))
            for key in keys:
                conn.execute(t.api_keys.insert().values(**key))
            self._audit(conn, "import", None, default, None,
                        f"imported the old files: {len(history)} history entries, {len(keys)} keys")
            self._bump(conn)

    # -- the prediction log ------------------------------------------------------------------------

    def log_requests(self, rows: list[tuple]) -> None:
        """Append answered requests to the prediction log; each row is ``(at, request_id, model_version,
        shadow_version, items)``, ``items`` one :data:`LOG_ITEM` tuple per text (see :meth:`log_encoded`)."""
        dumps = orjson.dumps
        self.log_encoded([(at, rid, version, len(items), shadow, dumps(items).decode())
                          for at, rid, version, shadow, items in rows])

    def log_encoded(self, rows: list[tuple]) -> None:
        """Append answered requests to the prediction log in one statement; each row is ``(at,
        request_id, model_version, texts, shadow_version, items)``, ``items`` their JSON array of
        :data:`LOG_ITEM` arrays, already encoded (the prediction log's writer queues them so).

        PostgreSQL gets the rows as one JSON document it takes apart itself (``json_array_elements``):
        one round trip. SQLite is in-process, so there it is one ``executemany`` of the rows as they
        are (SQLite's ``json_each`` would parse a document and write each row's items out again:
        twice the CPU a text; ``benchmarks.predlog_cost`` measures it).
        """
        if not rows:
            return
        with self._connect("log", write=True) as conn:
            if conn.dialect.name == "postgresql":
                fragment = orjson.Fragment
                payload = orjson.dumps([(at, rid, version, n, shadow, fragment(items))
                                        for at, rid, version, n, shadow, items in rows]).decode()
                conn.exec_driver_sql(_BULK_LOG_POSTGRESQL, (payload,))
            elif conn.dialect.name == "sqlite":
                conn.exec_driver_sql(_INSERT_LOG, rows)
            else:
                conn.execute(t.prediction_log.insert(), [
                    {"at": at, "request_id": rid, "model_version": version, "texts": n, "shadow_version": shadow,
                     "items": items} for at, rid, version, n, shadow, items in rows])

    def purge_predictions(self, before: float) -> int:
        """Delete the requests logged before ``before`` (unix seconds); how many went."""
        with self._connect("purge", write=True) as conn:
            return conn.execute(t.prediction_log.delete().where(t.prediction_log.c.at < before)).rowcount

    @staticmethod
    def _texts(row) -> Iterator[dict]:
        """The logged texts of one request's row, as flat records (see :data:`LOG_COLUMNS`)."""
        head = {"at": row["at"], "request_id": row["request_id"], "model_version": row["model_version"],
                "shadow_version": row["shadow_version"]}
        for position, item in enumerate(orjson.loads(row["items"])):
            yield {**head, "position": position, **dict(zip(LOG_ITEM, item, strict=True))}

    def predictions(self, since: float | None = None, until: float | None = None, version: str | None = None,
                    batch: int = 1000) -> Iterator[dict]:
        """Every logged text, oldest first, read ``batch`` requests at a time (for an export of any size)."""
        last = 0
        while True:
            query = sa.select(t.prediction_log).where(t.prediction_log.c.id > last)
            if since is not None:
                query = query.where(t.prediction_log.c.at >= since)
            if until is not None:
                query = query.where(t.prediction_log.c.at < until)
            if version is not None:
                query = query.where(t.prediction_log.c.model_version == version)
            with self._connect("read") as conn:
                rows = conn.execute(query.order_by(t.prediction_log.c.id).limit(batch)).mappings().all()
            if not rows:
                return
            for row in rows:
                yield from self._texts(row)
            last = rows[-1]["id"]

    def recent_predictions(self, version: str, limit: int) -> list[dict]:
        """A version's newest ``limit`` logged texts, newest request first."""
        out: list[dict] = []
        last = None
        while len(out) < limit:
            query = sa.select(t.prediction_log).where(t.prediction_log.c.model_version == version)
            if last is not None:
                query = query.where(t.prediction_log.c.id < last)
            with self._connect("read") as conn:
                rows = conn.execute(query.order_by(t.prediction_log.c.id.desc()).limit(200)).mappings().all()
            if not rows:
                break
            for row in rows:
                out.extend(self._texts(row))
            last = rows[-1]["id"]
        return out[:limit]

    def find_predictions(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        """The logged text of each ``(request id, position)`` (the newest request, should a client have
        reused a request id)."""
        if not keys:
            return {}
        ids = sorted({rid for rid, _ in keys})
        with self._connect("read") as conn:
            rows = conn.execute(sa.select(t.prediction_log).where(t.prediction_log.c.request_id.in_(ids))
                                .order_by(t.prediction_log.c.id)).mappings().all()
        found = {(r["request_id"], r["position"]): r for row in rows for r in self._texts(row)}
        return {k: found[k] for k in keys if k in found}

    def drift_window(self, version: str, limit: int) -> dict:
        """A version's newest ``limit`` logged texts, as the drift statistics read them: ``tags``,
        ``confidence``, ``tokens`` and ``unknown`` (one entry per text, newest request first) and the
        time span ``first_at`` .. ``last_at`` (unix seconds; None with no text).

        Two reads along the (version, id) index: the newest ``limit`` requests' ids and text counts,
        which say where the window starts, then only the four fields of each of the window's texts.
        """
        out: dict = {"tags": [], "confidence": [], "tokens": [], "unknown": [], "first_at": None, "last_at": None}
        log = t.prediction_log
        with self._connect("drift") as conn:
            heads = conn.execute(sa.select(log.c.id, log.c.texts).where(log.c.model_version == version)
                                 .order_by(log.c.id.desc()).limit(limit)).all()
            if not heads:
                return out
            newest, oldest, counted = heads[0][0], heads[-1][0], 0
            for row_id, texts in heads:
                counted += texts
                if counted >= limit:
                    oldest = row_id
                    break
            dialect = conn.dialect.name
            if dialect in _WINDOW:
                rows = conn.exec_driver_sql(_WINDOW[dialect], (version, oldest, newest)).all()
            else:
                rows = [(r.id, r.at, i, item[0], item[1], item[5], item[6])
                        for r in conn.execute(sa.select(log.c.id, log.c.at, log.c.items)
                                              .where(log.c.model_version == version, log.c.id.between(oldest, newest))
                                              .order_by(log.c.id.desc()))
                        for i, item in enumerate(orjson.loads(r.items))]
        rows = rows[:limit]
        out["tags"] = [r[3] for r in rows]
        out["confidence"] = [float(r[4]) for r in rows]
        out["tokens"] = [int(r[5]) for r in rows]
        out["unknown"] = [int(r[6]) for r in rows]
        out["first_at"], out["last_at"] = rows[-1][1], rows[0][1]
        return out

    # -- reference profiles of older versions --------------------------------------------------------

    def drift_profile(self, version: str) -> dict | None:
        """The profile kept for ``version`` (after checking its sha256), or None.

        Raises:
            StoreError: the stored text does not match its sha256.
        """
        with self._connect("read") as conn:
            row = conn.execute(sa.select(t.drift_profiles.c.profile, t.drift_profiles.c.sha256)
                               .where(t.drift_profiles.c.version == version)).first()
        if row is None:
            return None
        if hashlib.sha256(row.profile.encode("utf-8")).hexdigest() != row.sha256:
            raise StoreError(f"the stored reference profile of {version} does not match its sha256; compute it "
                             f"again with `python -m tagifai_api drift profile {version}`")
        return json.loads(row.profile)

    def save_drift_profile(self, version: str, profile: dict, dataset_sha256: str) -> None:
        """Keep ``profile`` as ``version``'s (replacing one kept before)."""
        text = json.dumps(profile, sort_keys=True)
        values = {"created_at": _now(), "dataset_sha256": dataset_sha256,
                  "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "profile": text}
        with self._connect("save_profile", write=True) as conn:
            table = t.drift_profiles
            if conn.execute(sa.select(table.c.version).where(table.c.version == version).with_for_update()).first():
                conn.execute(table.update().where(table.c.version == version).values(**values))
            else:
                conn.execute(table.insert().values(version=version, **values))

    # -- feedback ----------------------------------------------------------------------------------

    def record_feedback(self, items: list[dict]) -> list[str]:
        """Store corrections (``subject`` names what is corrected; a second correction of the same
        subject replaces the first); ``"created"`` or ``"updated"`` for each, in order.

        They are written in the order they came (one request's corrections share a time, and their ids
        keep that order for the retraining's split). On PostgreSQL one request writes at a time, under
        an advisory lock: two correcting the same subjects in opposite orders would otherwise wait on
        each other's rows until one is aborted as a deadlock (SQLite's writers already queue), and
        feedback comes at the pace people correct tags."""
        with self._connect("feedback", write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _FEEDBACK_LOCK})
            return [self._write_feedback(conn, item) for item in items]

    @staticmethod
    def _write_feedback(conn: Connection, item: dict) -> str:
        """Insert or replace one correction (writers take turns, see :meth:`record_feedback`: a subject
        nobody corrected yet has no row to lock, and two first corrections would both insert)."""
        table = t.feedback
        existing = conn.execute(sa.select(table.c.id).where(table.c.subject == item["subject"])).scalar_one_or_none()
        if existing is None:
            conn.execute(table.insert().values(**item))
            return "created"
        conn.execute(table.update().where(table.c.id == existing).values(**item))
        return "updated"

    def feedback_outcomes(self, version: str, since: float | None = None) -> list[tuple[str, str]]:
        """``(predicted, actual)`` of every correction of ``version``'s predictions (since ``since``)."""
        query = sa.select(t.feedback.c.predicted, t.feedback.c.tag).where(t.feedback.c.model_version == version)
        if since is not None:
            query = query.where(t.feedback.c.at >= since)
        with self._connect("read") as conn:
            return [(p, a) for p, a in conn.execute(query).all()]

    def feedback_summary(self) -> dict[str, tuple[int, int]]:
        """``{version: (corrections, of which the prediction was right)}``."""
        right = sa.func.sum(sa.case((t.feedback.c.predicted == t.feedback.c.tag, 1), else_=0))
        query = (sa.select(t.feedback.c.model_version, sa.func.count(), right)
                 .where(t.feedback.c.model_version.is_not(None)).group_by(t.feedback.c.model_version))
        with self._connect("read") as conn:
            return {v: (int(n), int(ok or 0)) for v, n, ok in conn.execute(query).all()}

    def shadow_outcomes(self, shadow: str, version: str) -> tuple[int, int]:
        """``(texts the shadow scored, of which it agreed)`` among the logged answers of ``version``
        that ``shadow`` shadowed (a text the shadow dropped has no shadow tag and is not counted)."""
        scored = agreed = 0
        last = 0
        while True:
            query = (sa.select(t.prediction_log.c.id, t.prediction_log.c["items"])
                     .where(t.prediction_log.c.shadow_version == shadow, t.prediction_log.c.model_version == version,
                            t.prediction_log.c.id > last)
                     .order_by(t.prediction_log.c.id).limit(1000))
            with self._connect("read") as conn:
                rows = conn.execute(query).all()
            if not rows:
                return scored, agreed
            for _, items in rows:
                for item in orjson.loads(items):
                    if item[3] is not None:  # LOG_ITEM: predicted, ..., shadow_predicted
                        scored += 1
                        agreed += item[0] == item[3]
            last = rows[-1][0]

    def feedback_rows(self) -> tuple[int, int]:
        """``(corrections, of which the text is kept)``: how much feedback could become training data."""
        kept = sa.func.sum(sa.case((t.feedback.c.text.is_not(None), 1), else_=0))
        with self._connect("read") as conn:
            n, with_text = conn.execute(sa.select(sa.func.count(), kept).select_from(t.feedback)).one()
        return int(n), int(with_text or 0)

    def labelled_texts(self, batch: int = 5000) -> Iterator[dict]:
        """Every correction whose text is kept, oldest first: ``{id, text, tag, at, source, text_hash}``."""
        last = 0
        while True:
            query = (sa.select(t.feedback.c.id, t.feedback.c.text, t.feedback.c.tag, t.feedback.c.at,
                               t.feedback.c.source, t.feedback.c.text_hash)
                     .where(t.feedback.c.id > last, t.feedback.c.text.is_not(None))
                     .order_by(t.feedback.c.id).limit(batch))
            with self._connect("read") as conn:
                rows = conn.execute(query).mappings().all()
            if not rows:
                return
            for row in rows:
                yield {k: row[k] for k in ("id", "text", "tag", "at", "source", "text_hash")}
            last = rows[-1]["id"]
