"""When a bundle's reconstruction last failed its own fingerprint, and why (issue 19 N6).

A failure was remembered by one process only: a restart or another replica decoded the bundle
again on its first request, and again after every restart. ``verification_failed_at`` (NULL: no
failure recorded) and ``verification_error`` (the error code and message the routes answer, as
JSON ``{"code", "message"}``) make it durable; no route serves a bundle with a failure recorded.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundles") as batch:  # batch mode: SQLite cannot ALTER in place
        batch.add_column(sa.Column("verification_failed_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("verification_error", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bundles") as batch:
        batch.drop_column("verification_error")
        batch.drop_column("verification_failed_at")
