"""Reference profiles for the drift statistics of versions written without one.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_profiles",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("dataset_sha256", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("drift_profiles")
