"""``FileBlobStore``: blobs as files under one directory (``file://`` URLs; the embedded default).

Layout ``<root>/<kind>/<sha256>`` (the layout of servers before blob URLs, so their data directories
keep working). A put hard-links (or copies) the staged file to ``<root>/.incoming/<random>``, fsyncs
it, and renames it into place: rename is atomic on one filesystem, so a reader sees either no file
or the whole file, and a crash leaves only an ``.incoming`` file, removed at the next start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.errors import BlobNotFoundError, StorageUnavailableError
from service.storage.blobs import BlobReader, BlobStore, Staged
from service.storage.refs import KINDS, Kind, is_digest

__all__ = ["FileBlobStore"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pieces(f: IO[bytes], start: int, end: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """Read ``[start, end)`` of an open file in pieces, then close it (a sync generator for a worker thread)."""
    with f:
        f.seek(start)
        left = end - start
        while left > 0:
            data = f.read(min(piece, left))
            if not data:
                raise OSError(f"{f.name} shrank while being sent")
            left -= len(data)
            yield data


class FileBlobStore(BlobStore):
    """Blobs under ``root``; creates the directories and removes stale partial puts at start."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = self.root.as_uri()
        self._incoming = self.root / ".incoming"
        for d in (self._incoming, *(self.root / k for k in KINDS)):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self._incoming.iterdir():  # left by a crash mid-put: never visible, never referenced
            stale.unlink(missing_ok=True)

    def _path(self, kind: Kind, digest: str) -> Path:
        if kind not in KINDS or not is_digest(digest):
            raise ValueError(f"not a blob name: {kind}/{digest}")
        return self.root / kind / digest

    def put(self, kind: Kind, digest: str, staged: Staged) -> None:
        dest = self._path(kind, digest)
        if dest.exists():
            return
        part = self._incoming / uuid.uuid4().hex
        try:
            try:
                os.link(staged.path, part)  # same filesystem: no copy, and ``staged`` stays usable
            except OSError:
                shutil.copyfile(staged.path, part)
                with open(part, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(part, dest)
            _fsync_dir(dest.parent)
        except OSError as exc:
            part.unlink(missing_ok=True)
            raise StorageUnavailableError(f"cannot store {kind}/{digest}: {exc}") from exc

    def exists(self, kind: Kind, digest: str) -> bool:
        return self._path(kind, digest).is_file()

    def open_range(self, kind: Kind, digest: str, start: int, end: int) -> BlobReader:
        path = self._path(kind, digest)
        try:
            # Opened now, closed by the generator: a delete from here on cannot cut the response short.
            f = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {kind}/{digest}") from exc
        return BlobReader(_pieces(f, start, end))

    def read_all(self, kind: Kind, digest: str) -> bytes:
        try:
            return self._path(kind, digest).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {kind}/{digest}") from exc

    def download(self, kind: Kind, digest: str, dest: IO[bytes]) -> None:
        try:
            with open(self._path(kind, digest), "rb") as f:
                shutil.copyfileobj(f, dest, 1 << 20)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"no blob {kind}/{digest}") from exc

    def delete(self, kind: Kind, digest: str) -> None:
        self._path(kind, digest).unlink(missing_ok=True)

    def local_file(self, kind: Kind, digest: str) -> Path | None:
        path = self._path(kind, digest)
        return path if path.is_file() else None

    def ping(self) -> None:
        try:
            with tempfile.TemporaryFile(dir=self._incoming):
                pass
        except OSError as exc:
            raise StorageUnavailableError(f"blob directory {self.root} is not writable: {exc}") from exc
