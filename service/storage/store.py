"""``Store``: what routes and the engine use — the metadata store and the blob store, composed.

Ordering rules that keep the two consistent (no row without its blob, no cut-short read), with any
number of replicas and any interleaving:

* upload: the blob is put first (idempotent; a crash here leaves at most an unreferenced complete
  blob), then the row and tag are written in one transaction that re-checks, with the row locked,
  that the blob still exists (a concurrent delete of the same digest may have removed it) and
  puts it again if not;
* delete: the tags and row are removed and the blob deleted inside one transaction, with the row
  locked, so an upload of the same digest waits for it and then heals the blob;
* read: the blob is opened before a status is sent; a blob deleted between the metadata lookup and
  the open answers 404, and an opened one is read to its end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

from service.config import Settings
from service.errors import (
    BaseNotFoundError,
    BlobNotFoundError,
    BundleNotFoundError,
    FileNotStoredError,
    StoreConfigError,
)
from service.storage.blobs import BlobReader, BlobStore, Staged
from service.storage.file_blobs import FileBlobStore
from service.storage.local_cache import LocalBlobCache
from service.storage.metadata import MetadataStore
from service.storage.refs import BaseRecord, BundleRecord, FileRecord, Kind
from service.storage.s3_blobs import S3BlobStore

__all__ = ["Store", "open_blob_store"]

log = logging.getLogger("mcnc.service.storage")


def open_blob_store(url: str, *, endpoint_url: str | None = None, multipart_bytes: int = 64 << 20) -> BlobStore:
    """The blob store for ``url``: ``file:///abs/dir`` or ``s3://bucket[/prefix]``.

    Raises:
        StoreConfigError: another scheme or a malformed URL.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise StoreConfigError(f"MCNC_BLOB_URL {url!r}: expected file:///absolute/path")
        return FileBlobStore(Path(parsed.path))
    if parsed.scheme == "s3":
        return S3BlobStore(url, endpoint_url=endpoint_url, multipart_bytes=multipart_bytes)
    raise StoreConfigError(f"MCNC_BLOB_URL {url!r}: the scheme must be file:// or s3://")


class Store:
    """Metadata (``meta``) and blobs (``blobs``) of one server, plus its local staging and base cache.

    Reads of records go to ``store.meta`` directly; everything that touches blobs goes through
    the methods here.
    """

    def __init__(self, meta: MetadataStore, blobs: BlobStore, *, staging: Path, cache: LocalBlobCache) -> None:
        self.meta, self.blobs, self.cache = meta, blobs, cache
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        for stale in self.staging.glob("upload-*.tmp"):  # left by a crash: never referenced
            stale.unlink(missing_ok=True)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The stores ``settings`` name; the embedded SQLite database is migrated to the current schema.

        Raises:
            StoreConfigError: an unusable URL; SchemaOutOfDateError: a shared database to migrate first.
        """
        url = settings.resolved_database_url()
        meta = MetadataStore(url, auto_upgrade=url.startswith("sqlite"))
        try:
            blobs = open_blob_store(
                settings.resolved_blob_url(),
                endpoint_url=settings.s3_endpoint_url,
                multipart_bytes=settings.s3_multipart_bytes,
            )
        except BaseException:
            meta.close()
            raise
        cache = LocalBlobCache(blobs, settings.data_dir / "cache" / "blobs", settings.local_cache_bytes)
        return cls(meta, blobs, staging=settings.data_dir / "tmp", cache=cache)

    def stage(self) -> Staged:
        """A local temp file for an upload (validated before it is stored)."""
        return Staged(self.staging)

    def _ensure(self, kind: Kind, digest: str, staged: Staged) -> None:
        if not self.blobs.exists(kind, digest):
            log.info("%s/%s was deleted while being uploaded again; storing it again", kind, digest)
            self.blobs.put(kind, digest, staged)

    def add_bundle(
        self, staged: Staged, rec: BundleRecord, *, tag: tuple[str, str] | None, files: dict[str, str] | None = None
    ) -> tuple[BundleRecord, bool]:
        """Store a validated bundle's blob and record, and point ``tag`` (name, tag) at it with the
        sidecar ``files`` (file name -> sha256 of a stored file) in the same transaction.

        Returns:
            The stored record and whether it is new.
        """
        self.blobs.put("bundles", rec.digest, staged)
        ensure = lambda: self._ensure("bundles", rec.digest, staged)  # noqa: E731
        return self.meta.add_bundle(rec, tag=tag, before_commit=ensure, files=files)

    def add_base(
        self, staged: Staged, rec: BaseRecord, *, name: str | None = None, files: dict[str, str] | None = None
    ) -> tuple[BaseRecord, bool]:
        """Store a validated base's blob and record and, with ``name``, register it under that repo name
        with the sidecar ``files`` in the same transaction (``MetadataStore.add_base``).

        Returns:
            The record and whether it is new.
        """
        self.blobs.put("bases", rec.digest, staged)
        ensure = lambda: self._ensure("bases", rec.digest, staged)  # noqa: E731
        return self.meta.add_base(rec, before_commit=ensure, name=name, files=files)

    def add_file(self, staged: Staged, sha256: str, oid: str) -> tuple[FileRecord, bool]:
        """Store a sidecar file (``staged.finish()`` gave ``sha256``; ``oid`` is its git blob id); its
        record and whether it is new."""
        self.blobs.put("files", sha256, staged)
        rec = FileRecord("", sha256, staged.size, oid)
        created = self.meta.add_file(rec, before_commit=lambda: self._ensure("files", sha256, staged))
        return rec, created

    def open_file(self, sha256: str, start: int = 0, end: int | None = None) -> BlobReader:
        """Bytes ``[start, end)`` (default: all) of a stored sidecar file, opened.

        Raises:
            FileNotStoredError: no such file (404).
        """
        if end is None:
            rec = self.meta.get_file(sha256)
            if rec is None:
                raise FileNotStoredError(f"no file sha256:{sha256}")
            end = rec.size
        try:
            return self.blobs.open_range("files", sha256, start, end)
        except BlobNotFoundError as exc:
            raise FileNotStoredError(f"no file sha256:{sha256}") from exc

    def file_bytes(self, sha256: str) -> bytes:
        """A stored sidecar file's bytes (they are small: ``MCNC_MAX_FILE_BYTES``); FileNotStoredError if gone."""
        try:
            return self.blobs.read_all("files", sha256)
        except BlobNotFoundError as exc:
            raise FileNotStoredError(f"no file sha256:{sha256}") from exc

    def delete_bundle(self, digest: str, *, force: bool) -> None:
        """Delete a bundle, its tags and its blob; see ``MetadataStore.delete_bundle`` for the errors."""
        self.meta.delete_bundle(digest, force=force, before_commit=lambda: self.blobs.delete("bundles", digest))

    def open_bundle(self, digest: str, start: int, end: int) -> BlobReader:
        """Bytes ``[start, end)`` of a stored bundle, opened; BundleNotFoundError if it is gone."""
        try:
            return self.blobs.open_range("bundles", digest, start, end)
        except BlobNotFoundError as exc:
            raise BundleNotFoundError(f"no bundle sha256:{digest} (deleted)") from exc

    def open_base(self, digest: str, start: int, end: int) -> BlobReader:
        """Bytes ``[start, end)`` of a registered base file, opened; BaseNotFoundError if it is gone."""
        try:
            return self.blobs.open_range("bases", digest, start, end)
        except BlobNotFoundError as exc:
            raise BaseNotFoundError(f"no base sha256:{digest}") from exc

    def bundle_bytes(self, digest: str) -> bytes:
        """A stored bundle's bytes; BundleNotFoundError if it is gone."""
        try:
            return self.blobs.read_all("bundles", digest)
        except BlobNotFoundError as exc:
            raise BundleNotFoundError(f"no bundle sha256:{digest} (deleted)") from exc

    def base_file(self, rec: BaseRecord) -> Path:
        """A local file of a registered base (for ``safe_open``), from the local cache for remote stores."""
        try:
            return self.cache.path("bases", rec.digest, sha256=rec.file_sha256)
        except BlobNotFoundError as exc:
            raise BaseNotFoundError(f"no base sha256:{rec.digest}") from exc

    def ping(self) -> None:
        """Raises StorageUnavailableError unless the database, the blob store and the staging directory work."""
        self.meta.ping()
        self.blobs.ping()
        Staged(self.staging).discard()

    def close(self) -> None:
        self.blobs.close()
        self.meta.close()
