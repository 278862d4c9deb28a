"""``S3BlobStore``: blobs as objects in an S3-compatible bucket (``s3://bucket/prefix`` URLs).

Keys are ``<prefix>/<kind>/<sha256>``. boto3's transfer manager uploads a staged file in one PUT
below ``multipart_bytes`` and as a multipart upload above it; either way S3 makes the object
visible only when the PUT or CompleteMultipartUpload succeeds, so an interrupted upload is never
listed or served. The parts of a multipart upload killed mid-way stay in the bucket (invisible,
but billed) until aborted: a store aborts its prefix's uploads older than a day at start; a bucket
lifecycle rule ``AbortIncompleteMultipartUpload`` does the same without a restart.

Credentials and region come from boto3's standard chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, instance roles); ``endpoint_url``
(``MCNC_S3_ENDPOINT_URL``) points it at MinIO, Ceph, or any other S3-compatible server.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.errors import BlobNotFoundError, StorageUnavailableError, StoreConfigError
from service.storage.blobs import BlobReader, BlobStore, Staged
from service.storage.refs import KINDS, Kind, is_digest

__all__ = ["S3BlobStore"]

log = logging.getLogger("mcnc.service.storage")
_MISSING = {"404", "NoSuchKey", "NotFound"}
_STALE_UPLOAD = datetime.timedelta(days=1)
_PIECE = 1 << 20


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3BlobStore(BlobStore):
    """Objects in ``s3://bucket/prefix``; the bucket must exist.

    Args:
        url: ``s3://bucket`` or ``s3://bucket/some/prefix``.
        endpoint_url: an S3-compatible server's URL (None: AWS).
        multipart_bytes: bodies from this size on are uploaded in parts of this size (at least 5 MiB,
            S3's smallest part).

    Raises:
        StoreConfigError: a malformed URL, or a bucket that does not answer (missing, no access).
    """

    def __init__(self, url: str, *, endpoint_url: str | None = None, multipart_bytes: int = 64 << 20) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
            raise StoreConfigError(f"MCNC_BLOB_URL {url!r}: expected s3://bucket[/prefix]")
        self.url, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/")
        part = max(multipart_bytes, 5 << 20)
        self._transfer = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)
        config = Config(retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=32)
        try:
            self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, config=config)
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StoreConfigError(f"MCNC_BLOB_URL {url!r}: bucket {self.bucket!r} is not usable: {exc}") from exc
        self._abort_stale_uploads()

    def _key(self, kind: Kind, digest: str) -> str:
        if kind not in KINDS or not is_digest(digest):
            raise ValueError(f"not a blob name: {kind}/{digest}")
        return f"{self.prefix}/{kind}/{digest}" if self.prefix else f"{kind}/{digest}"

    def _abort_stale_uploads(self) -> None:
        cutoff = datetime.datetime.now(datetime.timezone.utc) - _STALE_UPLOAD
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"] < cutoff:  # a day old: its uploader is long gone
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        log.info("aborted a stale multipart upload of %s", up["Key"])
        except (ClientError, BotoCoreError) as exc:  # housekeeping only: the store works without it
            log.warning("could not list stale multipart uploads in %s: %s", self.url, exc)

    @contextmanager
    def _errors(self, what: str, missing: tuple[Kind, str] | None = None) -> Iterator[None]:
        """Translate boto errors: a missing ``missing`` object -> BlobNotFoundError, anything else ->
        StorageUnavailableError naming ``what``."""
        try:
            yield
        except ClientError as exc:
            if missing is not None and _missing(exc):
                raise BlobNotFoundError(f"no blob {missing[0]}/{missing[1]}") from exc
            raise StorageUnavailableError(f"object store {self.url}: {what} failed: {exc}") from exc
        except (BotoCoreError, OSError) as exc:
            raise StorageUnavailableError(f"object store {self.url}: {what} failed: {exc}") from exc

    def put(self, kind: Kind, digest: str, staged: Staged) -> None:
        if self.exists(kind, digest):
            return
        with self._errors(f"upload of {kind}/{digest}"):
            self.client.upload_file(str(staged.path), self.bucket, self._key(kind, digest), Config=self._transfer)

    def exists(self, kind: Kind, digest: str) -> bool:
        try:
            with self._errors(f"HEAD {kind}/{digest}", missing=(kind, digest)):
                self.client.head_object(Bucket=self.bucket, Key=self._key(kind, digest))
            return True
        except BlobNotFoundError:
            return False

    def _get(self, kind: Kind, digest: str, **kw: Any) -> Any:
        with self._errors(f"GET {kind}/{digest}", missing=(kind, digest)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(kind, digest), **kw)["Body"]

    def open_range(self, kind: Kind, digest: str, start: int, end: int) -> BlobReader:
        if end <= start:
            return BlobReader(iter(()))
        body = self._get(kind, digest, Range=f"bytes={start}-{end - 1}")  # the GET is sent now

        def pieces() -> Iterator[bytes]:
            try:
                with self._errors(f"reading {kind}/{digest}"):
                    yield from body.iter_chunks(_PIECE)
            finally:
                body.close()

        return BlobReader(pieces())

    def read_all(self, kind: Kind, digest: str) -> bytes:
        body = self._get(kind, digest)
        try:
            with self._errors(f"reading {kind}/{digest}"):
                data: bytes = body.read()
            return data
        finally:
            body.close()

    def download(self, kind: Kind, digest: str, dest: IO[bytes]) -> None:
        with self._errors(f"download of {kind}/{digest}", missing=(kind, digest)):
            self.client.download_fileobj(self.bucket, self._key(kind, digest), dest, Config=self._transfer)

    def delete(self, kind: Kind, digest: str) -> None:
        with self._errors(f"DELETE {kind}/{digest}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(kind, digest))

    def ping(self) -> None:
        with self._errors("HEAD bucket"):
            self.client.head_bucket(Bucket=self.bucket)

    def close(self) -> None:
        self.client.close()
