"""The blob store interface (content-addressed, by kind and sha256) and the staged upload it takes.

A blob store holds immutable objects named ``(kind, digest)``; it never hands out paths to stored
objects. Implementations (chosen by ``MCNC_BLOB_URL``): ``file://`` (``FileBlobStore``) and
``s3://bucket/prefix`` (``S3BlobStore``). Their shared contract, which ``tests/service/contract``
checks on every implementation:

* ``put`` is idempotent and atomic: an object is visible (``exists``, ``open_range``) only once
  complete, and a put interrupted at any point (even by kill -9) leaves no object at all;
* ``open_range`` opens the object before returning (a missing object raises there, before any
  response status is sent); the returned iterator then streams the bytes;
* ``delete`` of an absent object is not an error.

Uploads are staged in a local temp file (``Staged``) first: the server validates a bundle or base
completely before storing it, and needs a file to do so.
"""

from __future__ import annotations

import abc
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.storage.refs import Kind

__all__ = ["BlobReader", "BlobStore", "Staged"]


class Staged:
    """An upload being received into a local temp file and hashed; ``discard()`` removes it.

    The file lives in a staging directory of this replica (``<data dir>/tmp``), never in a store.
    """

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".tmp")
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)

    def finish(self) -> str:
        """Flush and fsync; return the sha256 hex of what was written."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self.hash.hexdigest()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


class BlobReader(Iterator[bytes]):
    """An opened byte range of a blob: iterate it (in a worker thread) for the bytes; ``close()`` releases it."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces

    def __next__(self) -> bytes:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)  # generators hold the open file or HTTP body
        if close is not None:
            close()


class BlobStore(abc.ABC):
    """Immutable objects by ``(kind, sha256)``; every method is blocking (call it from a worker thread).

    Errors: ``BlobNotFoundError`` for a missing object, ``StorageUnavailableError`` when the
    backend fails.
    """

    url: str

    @abc.abstractmethod
    def put(self, kind: Kind, digest: str, staged: Staged) -> None:
        """Store the finished staged file as ``(kind, digest)`` (a no-op if present); ``staged`` stays usable."""

    @abc.abstractmethod
    def exists(self, kind: Kind, digest: str) -> bool: ...

    @abc.abstractmethod
    def open_range(self, kind: Kind, digest: str, start: int, end: int) -> BlobReader:
        """Open bytes ``[start, end)`` for reading; raises ``BlobNotFoundError`` now if the object is gone."""

    @abc.abstractmethod
    def read_all(self, kind: Kind, digest: str) -> bytes: ...

    @abc.abstractmethod
    def download(self, kind: Kind, digest: str, dest: IO[bytes]) -> None:
        """Write the whole object into ``dest`` (for local copies of bases)."""

    @abc.abstractmethod
    def delete(self, kind: Kind, digest: str) -> None: ...

    def local_file(self, kind: Kind, digest: str) -> Path | None:
        """The object as a local file when the backend keeps it as one (``file://``), else None.

        Only an optimisation for readers that need a file (a base for ``safe_open``): callers must
        work with None by downloading into their local cache.
        """
        return None

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``StorageUnavailableError`` unless the backend answers."""

    def close(self) -> None:  # noqa: B027 - optional: only stores holding connections override it
        """Release connections."""
