"""Hub repos: commit ids on tags, sidecar files on tags, bases registered under repo names.

* ``tags.commit``: the 40-hex Hub commit id (``service.storage.refs.commit_id``). Rows stored before
  this migration have no files, so their id is derived from the digest alone; it is computed here
  for every row (in batches: a registry may hold millions of tags), then the column becomes NOT NULL.
* ``files``, ``tag_files``: content-addressed sidecar files and the tags they are attached to.
* ``base_names``, ``base_files``: a base under a repo name, with its sidecar files.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_BATCH = 1000


def _commit_of(digest: str) -> str:
    # refs.commit_id(digest, []) written out: a migration must keep meaning what it meant when written.
    return hashlib.sha256(b"mcnc-commit/1\0" + digest.encode()).hexdigest()[:39] + "0"


def upgrade() -> None:
    with op.batch_alter_table("tags") as batch:
        batch.add_column(sa.Column("commit", sa.String(40), nullable=True))
    conn = op.get_bind()
    tags = sa.table("tags", sa.column("name"), sa.column("tag"), sa.column("digest"), sa.column("commit"))
    while True:
        rows = conn.execute(
            sa.select(tags.c.name, tags.c.tag, tags.c.digest).where(tags.c.commit.is_(None)).limit(_BATCH)
        ).all()
        if not rows:
            break
        for name, tag, digest in rows:
            conn.execute(
                sa.update(tags).where(tags.c.name == name, tags.c.tag == tag).values(commit=_commit_of(digest))
            )
    with op.batch_alter_table("tags") as batch:
        batch.alter_column("commit", existing_type=sa.String(40), nullable=False)
    op.create_index("tags_name_commit", "tags", ["name", "commit"])
    op.create_index("tags_name_updated", "tags", ["name", "updated_at"])
    op.create_table(
        "files",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("oid", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "tag_files",
        sa.Column("name", sa.String(257), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
        sa.Column("filename", sa.String(128), primary_key=True),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("files.sha256"), nullable=False),
        sa.ForeignKeyConstraint(["name", "tag"], ["tags.name", "tags.tag"], ondelete="CASCADE"),
    )
    op.create_table(
        "base_names",
        sa.Column("name", sa.String(257), primary_key=True),
        sa.Column("digest", sa.String(64), sa.ForeignKey("bases.digest"), nullable=False),
        sa.Column("commit", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("base_names_digest", "base_names", ["digest"])
    op.create_index("base_names_commit", "base_names", ["commit"])
    op.create_table(
        "base_files",
        sa.Column("name", sa.String(257), sa.ForeignKey("base_names.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("filename", sa.String(128), primary_key=True),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("files.sha256"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("base_files")
    op.drop_index("base_names_commit", table_name="base_names")
    op.drop_index("base_names_digest", table_name="base_names")
    op.drop_table("base_names")
    op.drop_table("tag_files")
    op.drop_table("files")
    op.drop_index("tags_name_updated", table_name="tags")
    op.drop_index("tags_name_commit", table_name="tags")
    with op.batch_alter_table("tags") as batch:
        batch.drop_column("commit")
