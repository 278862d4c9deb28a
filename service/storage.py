"""Content-addressed blob store (id = sha256, atomic writes) and the SQLite metadata index.

``Store`` is the interface routes use; ``LocalStore`` keeps blobs under ``DATA_DIR/blobs`` and
metadata in ``DATA_DIR/mcnc.sqlite3``. A networked backend (PostgreSQL metadata, shared blobs)
would implement the same methods.

Writes: bytes go to ``DATA_DIR/tmp/<random>`` while being hashed; ``commit_blob`` fsyncs and
renames into place (same filesystem, so the rename is atomic); anything else removes the temp
file. A blob exists before its metadata row, so a crash leaves at worst an unreferenced blob.
"""

from __future__ import annotations

import abc
import hashlib
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from mcnc_core import refs
from mcnc_core.errors import RefError
from mcnc_core.refs import DEFAULT_TAG, Ref
from service.errors import InvalidRequestError

__all__ = [
    "DEFAULT_TAG",
    "BaseRecord",
    "BundleRecord",
    "LocalStore",
    "Ref",
    "Store",
    "TagRecord",
    "TempBlob",
    "parse_ref",
]

Kind = Literal["bundles", "bases"]
_HEX = re.compile(r"[0-9a-f]{64}")


def validate_name(name: str, what: str = "name") -> str:
    """``mcnc_core.refs.validate_name`` (shared with the client), failing as 400 ``invalid_request``."""
    try:
        return refs.validate_name(name, what)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


def validate_tag(tag: str) -> str:
    """``mcnc_core.refs.validate_tag`` (shared with the client), failing as 400 ``invalid_request``."""
    try:
        return refs.validate_tag(tag)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


def parse_ref(ref: str) -> Ref:
    """``mcnc_core.refs.parse_ref`` (the one grammar client and server share), failing as 400
    ``invalid_request``."""
    try:
        return refs.parse_ref(ref)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


@dataclass(frozen=True)
class BundleRecord:
    digest: str
    size: int
    num_params: int
    reconstructed_nbytes: int
    stored_numbers: int
    mode: str
    base_sha256: str | None
    base_name: str | None
    created_at: float


@dataclass(frozen=True)
class BaseRecord:
    digest: str  # state_digest of the tensors
    file_sha256: str
    size: int
    num_tensors: int
    num_params: int
    created_at: float


@dataclass(frozen=True)
class TagRecord:
    name: str
    tag: str
    digest: str
    updated_at: float


class TempBlob:
    """A temp file under the store being written and hashed; ``discard()`` removes it."""

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


class Store(abc.ABC):
    """What routes need from storage: blobs by digest, bundle/base metadata, names and tags."""

    @abc.abstractmethod
    def temp_blob(self) -> TempBlob: ...
    @abc.abstractmethod
    def commit_blob(self, kind: Kind, tmp: TempBlob, digest: str) -> Path: ...
    @abc.abstractmethod
    def blob_path(self, kind: Kind, digest: str) -> Path: ...
    @abc.abstractmethod
    def add_bundle(self, rec: BundleRecord) -> bool: ...
    @abc.abstractmethod
    def get_bundle(self, digest: str) -> BundleRecord | None: ...
    @abc.abstractmethod
    def delete_bundle(self, digest: str) -> None: ...
    @abc.abstractmethod
    def add_base(self, rec: BaseRecord) -> bool: ...
    @abc.abstractmethod
    def get_base(self, digest: str) -> BaseRecord | None: ...
    @abc.abstractmethod
    def set_tag(self, name: str, tag: str, digest: str) -> None: ...
    @abc.abstractmethod
    def get_tag(self, name: str, tag: str) -> TagRecord | None: ...
    @abc.abstractmethod
    def delete_tag(self, name: str, tag: str) -> bool: ...
    @abc.abstractmethod
    def tags_for(self, digest: str) -> list[TagRecord]: ...
    @abc.abstractmethod
    def tags_named(self, name: str) -> list[TagRecord]: ...
    @abc.abstractmethod
    def list_tags(self, *, limit: int, offset: int) -> tuple[list[TagRecord], int]: ...
    @abc.abstractmethod
    def ping(self) -> None: ...
    @abc.abstractmethod
    def close(self) -> None: ...

    def resolve(self, ref: Ref) -> str | None:
        """The bundle digest ``ref`` names, or None."""
        if ref.digest is not None:
            return ref.digest if self.get_bundle(ref.digest) else None
        assert ref.name is not None and ref.tag is not None
        rec = self.get_tag(ref.name, ref.tag)
        return rec.digest if rec else None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
  digest TEXT PRIMARY KEY, size INTEGER NOT NULL, num_params INTEGER NOT NULL,
  reconstructed_nbytes INTEGER NOT NULL, stored_numbers INTEGER NOT NULL, mode TEXT NOT NULL,
  base_sha256 TEXT, base_name TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS bases (
  digest TEXT PRIMARY KEY, file_sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  num_tensors INTEGER NOT NULL, num_params INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
  name TEXT NOT NULL, tag TEXT NOT NULL, digest TEXT NOT NULL REFERENCES bundles(digest),
  updated_at REAL NOT NULL, PRIMARY KEY (name, tag));
CREATE INDEX IF NOT EXISTS tags_digest ON tags(digest);
"""


class LocalStore(Store):
    """Blobs in ``root/blobs/{bundles,bases}/<sha256>``, metadata in ``root/mcnc.sqlite3``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        for d in (self.tmp_dir, self.root / "blobs" / "bundles", self.root / "blobs" / "bases"):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("upload-*.tmp"):  # left by a crash: never referenced
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "mcnc.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # blobs
    def temp_blob(self) -> TempBlob:
        return TempBlob(self.tmp_dir)

    def blob_path(self, kind: Kind, digest: str) -> Path:
        assert _HEX.fullmatch(digest), digest
        return self.root / "blobs" / kind / digest

    def commit_blob(self, kind: Kind, tmp: TempBlob, digest: str) -> Path:
        """Move a finished temp blob into place (atomic rename) and fsync the directory."""
        dest = self.blob_path(kind, digest)
        os.replace(tmp.path, dest)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest

    # bundles
    def add_bundle(self, rec: BundleRecord) -> bool:
        """Insert unless present; True if inserted."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO bundles VALUES (?,?,?,?,?,?,?,?,?)",
                (rec.digest, rec.size, rec.num_params, rec.reconstructed_nbytes, rec.stored_numbers, rec.mode,
                 rec.base_sha256, rec.base_name, rec.created_at),
            )  # fmt: skip
            return cur.rowcount == 1

    def get_bundle(self, digest: str) -> BundleRecord | None:
        rows = self._query("SELECT * FROM bundles WHERE digest=?", (digest,))
        return BundleRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def delete_bundle(self, digest: str) -> None:
        """Remove tags, the metadata row, then the blob."""
        with self._tx() as db:
            db.execute("DELETE FROM tags WHERE digest=?", (digest,))
            db.execute("DELETE FROM bundles WHERE digest=?", (digest,))
        self.blob_path("bundles", digest).unlink(missing_ok=True)

    # bases
    def add_base(self, rec: BaseRecord) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO bases VALUES (?,?,?,?,?,?)",
                (rec.digest, rec.file_sha256, rec.size, rec.num_tensors, rec.num_params, rec.created_at),
            )
            return cur.rowcount == 1

    def get_base(self, digest: str) -> BaseRecord | None:
        rows = self._query("SELECT * FROM bases WHERE digest=?", (digest,))
        return BaseRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    # names and tags
    def set_tag(self, name: str, tag: str, digest: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO tags VALUES (?,?,?,?)", (name, tag, digest, time.time()))

    def get_tag(self, name: str, tag: str) -> TagRecord | None:
        rows = self._query("SELECT * FROM tags WHERE name=? AND tag=?", (name, tag))
        return TagRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def delete_tag(self, name: str, tag: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM tags WHERE name=? AND tag=?", (name, tag)).rowcount == 1

    def tags_for(self, digest: str) -> list[TagRecord]:
        rows = self._query("SELECT * FROM tags WHERE digest=? ORDER BY name, tag", (digest,))
        return [TagRecord(*r) for r in rows]  # type: ignore[arg-type]

    def tags_named(self, name: str) -> list[TagRecord]:
        rows = self._query("SELECT * FROM tags WHERE name=? ORDER BY tag", (name,))
        return [TagRecord(*r) for r in rows]  # type: ignore[arg-type]

    def list_tags(self, *, limit: int, offset: int) -> tuple[list[TagRecord], int]:
        rows = self._query("SELECT * FROM tags ORDER BY name, tag LIMIT ? OFFSET ?", (limit, offset))
        total = self._query("SELECT COUNT(*) FROM tags")[0][0]
        return [TagRecord(*r) for r in rows], int(total)  # type: ignore[arg-type,call-overload]

    def ping(self) -> None:
        self._query("SELECT 1")
        probe = self.tmp_dir / ".ready-probe"
        probe.write_bytes(b"")
        probe.unlink()

    def close(self) -> None:
        with self._lock:
            self._db.close()
