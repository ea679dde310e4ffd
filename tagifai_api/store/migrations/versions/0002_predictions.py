"""The prediction log and the feedback on it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prediction_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("texts", sa.Integer, nullable=False),
        sa.Column("shadow_version", sa.String(128)),
        sa.Column("items", sa.Text, nullable=False),
    )
    op.create_index("ix_prediction_log_at", "prediction_log", ["at"])
    op.create_index("ix_prediction_log_request_id", "prediction_log", ["request_id"])
    op.create_index("ix_prediction_log_version_id", "prediction_log", ["model_version", "id"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(200), nullable=False, unique=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128)),
        sa.Column("position", sa.Integer),
        sa.Column("model_version", sa.String(128)),
        sa.Column("predicted", sa.String(64)),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("key_name", sa.String(64)),
    )
    op.create_index("ix_feedback_at", "feedback", ["at"])
    op.create_index("ix_feedback_model_version", "feedback", ["model_version"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("prediction_log")
