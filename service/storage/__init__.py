"""Storage: metadata (SQLAlchemy: SQLite or PostgreSQL) and blobs (local files or S3), composed in ``Store``.

::

    refs.py         Ref, parse_ref, records (BundleRecord, BaseRecord, TagRecord)
    schema.py       the tables (SQLAlchemy Core), shared with the migrations
    migrate.py      Alembic: ``mcnc db upgrade``, the schema check at start
    metadata.py     MetadataStore: one implementation for every database URL
    blobs.py        BlobStore interface, Staged uploads
    file_blobs.py   FileBlobStore (file://)
    s3_blobs.py     S3BlobStore (s3://bucket/prefix)
    local_cache.py  LocalBlobCache: bounded local copies of remote blobs (bases)
    store.py        Store: both, with the ordering that keeps them consistent
"""

from service.storage.blobs import BlobReader, BlobStore, Staged
from service.storage.file_blobs import FileBlobStore
from service.storage.local_cache import LocalBlobCache
from service.storage.metadata import MetadataStore
from service.storage.refs import (
    DEFAULT_TAG,
    KINDS,
    BaseNameRecord,
    BaseRecord,
    BundleRecord,
    FileRecord,
    Kind,
    Ref,
    TagRecord,
    commit_id,
    is_digest,
    parse_ref,
    validate_filename,
    validate_name,
    validate_tag,
)
from service.storage.s3_blobs import S3BlobStore
from service.storage.store import Store, open_blob_store

__all__ = [
    "DEFAULT_TAG",
    "KINDS",
    "BaseNameRecord",
    "BaseRecord",
    "BlobReader",
    "BlobStore",
    "BundleRecord",
    "FileBlobStore",
    "FileRecord",
    "Kind",
    "LocalBlobCache",
    "MetadataStore",
    "Ref",
    "S3BlobStore",
    "Staged",
    "Store",
    "TagRecord",
    "commit_id",
    "is_digest",
    "open_blob_store",
    "parse_ref",
    "validate_filename",
    "validate_name",
    "validate_tag",
]
