"""Feedback keeps the prediction log's text hash (XXH3-128), renamed ``text_hash`` from ``text_sha256``.

The log hashes every text it records; XXH3's one-shot call costs a third of a SHA-256 and the hash
was most of what logging a text cost. A correction whose text is kept gets the new hash of it, so it
matches the log's rows from now on; one without its text keeps the SHA-256 it had (64 hex digits
against 32), as do log rows written before: they age out with the log's retention.

Revision ID: 0005
Revises: 0004
"""

import hashlib

import sqlalchemy as sa
import xxhash
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BATCH = 1000


def _rehash(column: str, digest) -> None:
    """Set ``column`` of every feedback row with its text to ``digest(text)``, a batch at a time."""
    conn = op.get_bind()
    feedback = sa.table("feedback", sa.column("id", sa.Integer), sa.column("text", sa.Text),
                        sa.column(column, sa.String))
    last = 0
    while True:
        rows = conn.execute(sa.select(feedback.c.id, feedback.c.text)
                            .where(feedback.c.id > last, feedback.c.text.is_not(None))
                            .order_by(feedback.c.id).limit(_BATCH)).all()
        if not rows:
            return
        conn.execute(feedback.update().where(feedback.c.id == sa.bindparam("row_id"))
                     .values({column: sa.bindparam("digest")}),
                     [{"row_id": i, "digest": digest(text.encode("utf-8", "surrogatepass"))} for i, text in rows])
        last = rows[-1][0]


def upgrade() -> None:
    op.execute("ALTER TABLE feedback RENAME COLUMN text_sha256 TO text_hash")
    _rehash("text_hash", xxhash.xxh3_128_hexdigest)


def downgrade() -> None:
    op.execute("ALTER TABLE feedback RENAME COLUMN text_hash TO text_sha256")
    _rehash("text_sha256", lambda data: hashlib.sha256(data).hexdigest())
