"""The service's state: generation counter, registry pointers and history, API keys, audit log.

Revision ID: 0001
Revises:
"""

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    generation = op.create_table(
        "generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(generation, [{"id": 1, "value": 0}])
    pointers = op.create_table(
        "pointers",
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("version", sa.String(128)),
        sa.Column("changed_at", sa.String(40), nullable=False),
    )
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    op.bulk_insert(pointers, [{"name": "default", "version": None, "changed_at": now},
                              {"name": "shadow", "version": None, "changed_at": now}])
    op.create_table(
        "default_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("replaced_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_value", sa.String(128)),
        sa.Column("to_value", sa.String(128)),
        sa.Column("key_name", sa.String(64)),
        sa.Column("reason", sa.Text),
    )


def downgrade() -> None:
    for table in ("audit_log", "api_keys", "default_history", "pointers", "generation"):
        op.drop_table(table)
