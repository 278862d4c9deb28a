"""The bundles' ``x-`` metadata (shown by GET /bundles/{ref} and /models/{ref}).

Rows stored before this migration keep NULL (their bundles' metadata is still in the blob:
``mcnc info`` reads it from there).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundles") as batch:  # batch mode: SQLite cannot ALTER in place
        batch.add_column(sa.Column("metadata_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bundles") as batch:
        batch.drop_column("metadata_json")
