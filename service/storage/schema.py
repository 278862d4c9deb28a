"""The metadata tables (SQLAlchemy Core): the one description both the store and the migrations use.

Types are chosen to match the tables the server created before migrations existed (SQLite:
TEXT/INTEGER/REAL), so the first migration adopts such a database as it is; sizes are BIGINT
because PostgreSQL's INTEGER stops at 2**31.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    MetaData,
    String,
    Table,
    Text,
)

from service.storage.refs import commit_id


def _commit_without_files(context: Any) -> str:
    return commit_id(context.get_current_parameters()["digest"], [])


__all__ = ["base_files", "base_names", "bases", "bundles", "files", "metadata", "tag_files", "tags"]

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
    # When its reconstruction failed its fingerprint, and the answer given (JSON {code, message});
    # NULL: no failure recorded (migration 0005). A row with a failure is never served.
    Column("verification_failed_at", Float),
    Column("verification_error", Text),
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
    # The Hub commit id (40 hex, ``refs.commit_id``): the digest and the tag's files (migration 0004).
    # The default (no files) serves writers that insert tags directly (benchmarks, tests).
    Column("commit", String(40), nullable=False, default=_commit_without_files),
    Index("tags_digest", "digest"),
    Index("tags_name_commit", "name", "commit"),  # revision = a commit id: a point query
    Index("tags_name_updated", "name", "updated_at"),  # revision main = the newest push: a point query
)

# Sidecar files (config.json, tokenizer files, README.md): content-addressed blobs of kind "files".
files = Table(
    "files",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("oid", String(40), nullable=False),  # git blob id (the Hub tree's ``oid``), computed once at upload
    Column("created_at", Float, nullable=False),
)

tag_files = Table(
    "tag_files",
    metadata,
    Column("name", String(257), primary_key=True),
    Column("tag", String(128), primary_key=True),
    Column("filename", String(128), primary_key=True),
    Column("sha256", String(64), ForeignKey("files.sha256"), nullable=False),
    ForeignKeyConstraint(["name", "tag"], ["tags.name", "tags.tag"], ondelete="CASCADE"),
)

# A base registered under a repo name (served as a whole-model Hub repo), with its sidecar files.
base_names = Table(
    "base_names",
    metadata,
    Column("name", String(257), primary_key=True),
    Column("digest", String(64), ForeignKey("bases.digest"), nullable=False),
    Column("commit", String(40), nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("base_names_digest", "digest"),
    Index("base_names_commit", "commit"),
)

base_files = Table(
    "base_files",
    metadata,
    Column("name", String(257), ForeignKey("base_names.name", ondelete="CASCADE"), primary_key=True),
    Column("filename", String(128), primary_key=True),
    Column("sha256", String(64), ForeignKey("files.sha256"), nullable=False),
)
