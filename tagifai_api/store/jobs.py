"""Jobs that run in a process of their own (retraining), and the lease that lets only one of a kind
run at a time across every worker and replica sharing the store.

The lease is a row (``leases``) naming the job that holds it and until when, by the database's own
clock (replicas' clocks may differ; the database's is one). A job renews it while it works; one
whose process died stops renewing, its lease lapses, and the next job to start takes it over and
records the dead one as failed. Taking it is one write transaction that locks the row (PostgreSQL's
``SELECT ... FOR UPDATE``, SQLite's ``BEGIN IMMEDIATE``), so two starters never both win.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tagifai_api.store import tables as t
from tagifai_api.store.database import ConflictError, Store

#: seconds a lease lasts without a renewal; a runner renews it every few seconds
LEASE_S = 60.0
#: states of a job; the last three are final
STATES = ("queued", "running", "succeeded", "failed")
_DB_NOW = {
    "sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
}


class JobRunningError(ConflictError):
    """Another job of that kind holds the lease; ``job`` describes it."""

    def __init__(self, job: dict) -> None:
        self.job = job
        super().__init__(f"a {job['kind']} is running already: job {job['id']} ({job['state']}, started "
                         f"{job['started_at'] or job['created_at']})")


class LeaseLostError(ConflictError):
    """The job's lease lapsed and another job took it: this one must stop without changing anything."""


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _db_now(conn: Connection) -> float:
    return float(conn.exec_driver_sql(_DB_NOW[conn.dialect.name]).scalar_one())


def _public(row, lease=None, now: float | None = None) -> dict:
    """A job as callers see it. One whose lease lapsed while it was unfinished is reported failed,
    as the next job to start will record it."""
    job = {"id": row["id"], "kind": row["kind"], "state": row["state"], "stage": row["stage"],
           "progress": row["progress"], "created_at": _iso(row["created_at"]), "started_at": _iso(row["started_at"]),
           "finished_at": _iso(row["finished_at"]), "heartbeat_at": _iso(row["heartbeat_at"]),
           "params": json.loads(row["params"]), "result": json.loads(row["result"]) if row["result"] else None,
           "error": row["error"], "key_name": row["key_name"], "runner": row["runner"]}
    if job["state"] in ("queued", "running") and lease is not None and now is not None:
        if lease["holder"] != row["id"] or lease["expires_at"] <= now:
            job["state"] = "failed"
            job["error"] = _lost(row)
    return job


def _lost(row) -> str:
    since = _iso(row["heartbeat_at"] or row["created_at"])
    return f"its process stopped: no sign of life since {since}, and its lease lapsed"


class Jobs:
    """The jobs and leases in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def start(self, kind: str, params: dict, key_name: str | None = None, lease_s: float = LEASE_S) -> dict:
        """Take the lease of ``kind`` for a new job and record it (queued); the job.

        Raises:
            JobRunningError: a live job holds the lease.
        """
        job_id = uuid.uuid4().hex
        with self.store._connect("job_start", write=True) as conn:
            lease = conn.execute(sa.select(t.leases).where(t.leases.c.name == kind).with_for_update()
                                 ).mappings().first()
            if lease is None:
                raise ConflictError(f"no lease for jobs of kind {kind!r}")
            now = _db_now(conn)
            if lease["holder"] is not None:
                holder = conn.execute(sa.select(t.jobs).where(t.jobs.c.id == lease["holder"])).mappings().first()
                if lease["expires_at"] > now and holder is not None and holder["state"] in ("queued", "running"):
                    raise JobRunningError(_public(holder))
                if holder is not None and holder["state"] in ("queued", "running"):
                    conn.execute(t.jobs.update().where(t.jobs.c.id == holder["id"])
                                 .values(state="failed", finished_at=now, error=_lost(holder)))
            conn.execute(t.leases.update().where(t.leases.c.name == kind)
                         .values(holder=job_id, expires_at=now + lease_s))
            conn.execute(t.jobs.insert().values(id=job_id, kind=kind, state="queued", created_at=now, progress=0.0,
                                                params=json.dumps(params, sort_keys=True), key_name=key_name))
        return self.get(job_id)

    def renew(self, job_id: str, kind: str, lease_s: float = LEASE_S, *, state: str | None = None,
              stage: str | None = None, progress: float | None = None, runner: str | None = None) -> None:
        """Extend the job's lease and note that it lives (and, if given, its state, stage and progress).

        Raises:
            LeaseLostError: the lease lapsed and another job holds it now (or the job ended).
        """
        with self.store._connect("job_renew", write=True) as conn:
            now = _db_now(conn)
            held = conn.execute(t.leases.update().where(t.leases.c.name == kind, t.leases.c.holder == job_id)
                                .values(expires_at=now + lease_s)).rowcount
            if not held:
                raise LeaseLostError(f"job {job_id} no longer holds the {kind} lease")
            values: dict = {"heartbeat_at": now}
            if state is not None:
                values["state"] = state
                if state == "running":
                    values["started_at"] = now
            if stage is not None:
                values["stage"] = stage
            if progress is not None:
                values["progress"] = progress
            if runner is not None:
                values["runner"] = runner
            conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(**values))

    def finish(self, job_id: str, kind: str, *, result: dict | None = None, error: str | None = None) -> None:
        """Record the job's end (``succeeded`` with ``result``, ``failed`` with ``error``) and release
        its lease, in one transaction."""
        with self.store._connect("job_finish", write=True) as conn:
            now = _db_now(conn)
            values = {"state": "failed" if error is not None else "succeeded", "finished_at": now,
                      "heartbeat_at": now, "error": error,
                      "result": json.dumps(result, sort_keys=True) if result is not None else None}
            if error is None:
                values.update(progress=1.0, stage="done")
            conn.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(**values))
            conn.execute(t.leases.update().where(t.leases.c.name == kind, t.leases.c.holder == job_id)
                         .values(holder=None, expires_at=now))

    def get(self, job_id: str) -> dict | None:
        """The job, or None when there is no such job."""
        with self.store._connect("read") as conn:
            now = _db_now(conn)
            # the job with its kind's lease in one statement: read one after the other, a job that
            # finished in between (state and lease change in one transaction) showed its old state
            # with the lease already released, and was called lost (PostgreSQL reads each statement
            # afresh)
            query = (sa.select(t.jobs, t.leases.c.holder.label("lease_holder"),
                               t.leases.c.expires_at.label("lease_expires_at"))
                     .select_from(t.jobs.outerjoin(t.leases, t.leases.c.name == t.jobs.c.kind))
                     .where(t.jobs.c.id == job_id))
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        lease = None if row["lease_expires_at"] is None else {"holder": row["lease_holder"],
                                                               "expires_at": row["lease_expires_at"]}
        return _public(row, lease, now)

    def recent(self, kind: str, limit: int = 20) -> list[dict]:
        """The newest ``limit`` jobs of ``kind``, newest first."""
        with self.store._connect("read") as conn:
            now = _db_now(conn)
            # the lease before the jobs: a job that finishes in between then shows as finished, never
            # as running without its lease (see :meth:`get`)
            lease = conn.execute(sa.select(t.leases).where(t.leases.c.name == kind)).mappings().first()
            rows = conn.execute(sa.select(t.jobs).where(t.jobs.c.kind == kind)
                                .order_by(t.jobs.c.created_at.desc()).limit(limit)).mappings().all()
        return [_public(row, lease, now) for row in rows]
