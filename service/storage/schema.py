"""The metadata tables (SQLAlchemy Core): the one description both the store and the migrations use.

Types are chosen to match the tables the server created before migrations existed (SQLite:
TEXT/INTEGER/REAL), so the first migration adopts such a database as it is; sizes are BIGINT
because PostgreSQL's INTEGER stops at 2**31.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, MetaData, String, Table, Text

__all__ = ["bases", "bundles", "metadata", "tags"]

metadata = MetaData()

bundles = Table(
    "bundles",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("num_params", BigInteger, nullable=False),
    Column("reconstructed_nbytes", BigInteger, nullable=False),
    Column("stored_numbers", BigInteger, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("base_sha256", String(64)),
    Column("base_name", Text),
    Column("created_at", Float, nullable=False),
    # The bundle's ``x-`` metadata as a JSON object; NULL for rows stored before migration 0002.
    Column("metadata_json", Text),
    # When its reconstruction last matched its fingerprint; NULL: not yet (see migration 0003).
    Column("verified_at", Float),
)

bases = Table(
    "bases",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("file_sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("num_tensors", BigInteger, nullable=False),
    Column("num_params", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)

tags = Table(
    "tags",
    metadata,
    Column("name", String(257), primary_key=True),  # org/name: two segments of at most 128
    Column("tag", String(128), primary_key=True),
    Column("digest", String(64), ForeignKey("bundles.digest"), nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("tags_digest", "digest"),
)
