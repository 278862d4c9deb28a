"""``LocalBlobCache``: this replica's local copies of remote blobs, bounded by a byte budget (LRU).

Readers that need a file (a delta's base is opened with ``safe_open``, which maps it) get one
here: the blob store's own file when it keeps blobs as local files, else a copy downloaded once
into ``directory`` and checked against its sha256. Least recently used copies are removed when
the total exceeds the budget (a copy in use stays readable: POSIX keeps an unlinked file's data
while it is open or mapped). A copy used in the last ``_IN_USE_S`` seconds is never removed, so a
reader that was just handed a path finds the file when it opens it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from service.errors import StorageUnavailableError
from service.storage.blobs import BlobStore
from service.storage.refs import Kind

__all__ = ["LocalBlobCache"]

_IN_USE_S = 60.0


class _HashingWriter:
    """A file wrapper that hashes what is written through it (boto3 writes with ``write`` only)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.f.write(data)


class LocalBlobCache:
    """Local files for ``(kind, digest)``; ``budget`` bytes of downloaded copies at most (one copy may exceed it)."""

    def __init__(self, blobs: BlobStore, directory: Path, budget: int) -> None:
        self.blobs, self.directory, self.budget = blobs, Path(directory), budget
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.part"):  # a download cut short by a crash
            stale.unlink(missing_ok=True)

    def path(self, kind: Kind, digest: str, *, sha256: str) -> Path:
        """A local file holding the blob, whose sha256 must be ``sha256``.

        Raises:
            BlobNotFoundError: the store has no such blob.
            StorageUnavailableError: the download failed or its bytes do not hash to ``sha256``.
        """
        local = self.blobs.local_file(kind, digest)
        if local is not None:
            return local
        dest = self.directory / f"{kind}-{digest}"
        with self._lock:
            key_lock = self._key_locks.setdefault((kind, digest), threading.Lock())
        with key_lock:  # one download per blob; concurrent readers wait for it
            if dest.exists():
                os.utime(dest)  # mtime orders the LRU
                return dest
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".part", delete=False) as f:
                part = Path(f.name)
                try:
                    writer = _HashingWriter(f)
                    self.blobs.download(kind, digest, writer)  # type: ignore[arg-type]
                    f.flush()
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
            if writer.hash.hexdigest() != sha256:
                part.unlink(missing_ok=True)
                raise StorageUnavailableError(f"the stored {kind}/{digest} does not hash to its recorded sha256")
            os.replace(part, dest)
        self._evict(keep=dest)
        return dest

    def _evict(self, *, keep: Path) -> None:
        recent = time.time() - _IN_USE_S
        with self._lock:
            files = []
            for p in self.directory.iterdir():
                if p.suffix != ".part" and p != keep:
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    files.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in files) + keep.stat().st_size
            for mtime, size, p in sorted(files):
                if total <= self.budget or mtime > recent:
                    break
                p.unlink(missing_ok=True)
                total -= size
