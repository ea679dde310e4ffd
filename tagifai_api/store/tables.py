"""The store's tables (SQLAlchemy Core), the one description of its schema; migrations build it."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

#: one row (id 1): bumped by every write, so a worker learns of any change with one cheap read
generation = Table(
    "generation", metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

#: the registry's pointers: ``default`` and ``shadow`` (a missing row or NULL version: none)
pointers = Table(
    "pointers", metadata,
    Column("name", String(16), primary_key=True),
    Column("version", String(128)),
    Column("changed_at", String(40), nullable=False),
)

#: the defaults replaced, oldest first by id; a rollback takes the newest one back
default_history = Table(
    "default_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(128), nullable=False),
    Column("replaced_at", String(40), nullable=False),
)

#: API keys: never the key, only its SHA-256
api_keys = Table(
    "api_keys", metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("sha256", String(64), nullable=False, unique=True),
)

#: who changed what, when and why: registry switches and key changes
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("action", String(32), nullable=False),
    Column("from_value", String(128)),
    Column("to_value", String(128)),
    Column("key_name", String(64)),
    Column("reason", Text),
)

#: every text /predict answered, one row per request: the request's time, id, version and shadow,
#: and ``items``, a JSON array with one ``[predicted, confidence, low_confidence, shadow_predicted,
#: text_length, tokens, unknown_tokens, text_hash, text]`` per text, in order (the text only in the
#: ``texts`` mode). One row a request keeps a 100-text request's logging to one index entry per index.
prediction_log = Table(
    "prediction_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("request_id", String(128), nullable=False, index=True),
    Column("model_version", String(128), nullable=False),
    Column("texts", Integer, nullable=False),
    Column("shadow_version", String(128)),
    Column("items", Text, nullable=False),
    Index("ix_prediction_log_version_id", "model_version", "id"),
    Index("ix_prediction_log_shadow_version", "shadow_version"),
)

#: corrections: one row per corrected prediction (``p:<request id>:<position>``) or per text
#: (``t:<sha256>``); a second correction of the same subject replaces the first
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subject", String(200), nullable=False, unique=True),
    Column("at", Float, nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("request_id", String(128)),
    Column("position", Integer),
    Column("model_version", String(128), index=True),
    Column("predicted", String(64)),
    Column("tag", String(64), nullable=False),
    Column("text_hash", String(64), nullable=False),
    Column("text", Text),
    Column("key_name", String(64)),
)

#: reference profiles of versions written before a profile was part of a version's files: computed
#: later from the dataset (``drift profile``), kept here because a version's directory never changes.
#: ``sha256`` is the profile text's, checked on every read, as a version's files are
drift_profiles = Table(
    "drift_profiles", metadata,
    Column("version", String(128), primary_key=True),
    Column("created_at", String(40), nullable=False),
    Column("dataset_sha256", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("profile", Text, nullable=False),
)

#: work that runs in a process of its own (retraining): its state, progress and result, whoever started
#: it (over HTTP or on the command line) and whichever replica it runs on
jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("heartbeat_at", Float),
    Column("stage", String(64)),
    Column("progress", Float, nullable=False),
    Column("params", Text, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("key_name", String(64)),
    Column("runner", String(200)),
    Index("ix_jobs_kind_created_at", "kind", "created_at"),
)

#: one row per kind of job that runs one at a time across every replica: the job holding it and until
#: when (the database's clock); the holder renews it while it works, so a crashed one's lapses
leases = Table(
    "leases", metadata,
    Column("name", String(32), primary_key=True),
    Column("holder", String(32)),
    Column("expires_at", Float, nullable=False),
)
