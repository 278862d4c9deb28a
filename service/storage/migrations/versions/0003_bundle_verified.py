"""When the server last checked a bundle's reconstruction against its own fingerprint.

NULL: never checked (every row stored before this migration, delta bundles uploaded before their
base, bundles over ``MCNC_VERIFY_MAX_PARAMS``): the server checks such a bundle in full before it
serves any byte of its weights, then records the time here.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundles") as batch:  # batch mode: SQLite cannot ALTER in place
        batch.add_column(sa.Column("verified_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bundles") as batch:
        batch.drop_column("verified_at")
