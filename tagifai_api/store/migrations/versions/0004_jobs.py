"""Jobs (retraining) and the lease that runs one at a time across replicas; the prediction log indexed by
shadow version (a shadow's live texts are counted before it is promoted).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("stage", sa.String(64)),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("key_name", sa.String(64)),
        sa.Column("runner", sa.String(200)),
    )
    op.create_index("ix_jobs_kind_created_at", "jobs", ["kind", "created_at"])
    leases = op.create_table(
        "leases",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("holder", sa.String(32)),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    # the row exists from the start, so two first takers lock it instead of racing to insert it
    op.bulk_insert(leases, [{"name": "retrain", "holder": None, "expires_at": 0.0}])
    op.create_index("ix_prediction_log_shadow_version", "prediction_log", ["shadow_version"])


def downgrade() -> None:
    op.drop_index("ix_prediction_log_shadow_version", "prediction_log")
    op.drop_table("leases")
    op.drop_table("jobs")
