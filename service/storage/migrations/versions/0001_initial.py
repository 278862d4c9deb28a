"""The bundles, bases and tags tables (adopts a database created before migrations existed).

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Servers before Alembic created these tables with CREATE TABLE IF NOT EXISTS: a data directory
    # from then already holds them (same names, columns and index), so create only what is missing.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "bundles" not in existing:
        op.create_table(
            "bundles",
            sa.Column("digest", sa.String(64), primary_key=True),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("num_params", sa.BigInteger, nullable=False),
            sa.Column("reconstructed_nbytes", sa.BigInteger, nullable=False),
            sa.Column("stored_numbers", sa.BigInteger, nullable=False),
            sa.Column("mode", sa.String(16), nullable=False),
            sa.Column("base_sha256", sa.String(64)),
            sa.Column("base_name", sa.Text),
            sa.Column("created_at", sa.Float, nullable=False),
        )
    if "bases" not in existing:
        op.create_table(
            "bases",
            sa.Column("digest", sa.String(64), primary_key=True),
            sa.Column("file_sha256", sa.String(64), nullable=False),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("num_tensors", sa.BigInteger, nullable=False),
            sa.Column("num_params", sa.BigInteger, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        )
    if "tags" not in existing:
        op.create_table(
            "tags",
            sa.Column("name", sa.String(257), primary_key=True),
            sa.Column("tag", sa.String(128), primary_key=True),
            sa.Column("digest", sa.String(64), sa.ForeignKey("bundles.digest"), nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        op.create_index("tags_digest", "tags", ["digest"])


def downgrade() -> None:
    op.drop_index("tags_digest", table_name="tags")
    op.drop_table("tags")
    op.drop_table("bases")
    op.drop_table("bundles")
