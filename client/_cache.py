"""The local content-addressed cache: ``blobs/<sha256>``, ``refs/<name>/<tag>``, ``.locks/``, ``.access/``.

Layout (as the Hugging Face Hub client's): ``$MCNC_CACHE_DIR/{CACHEDIR.TAG, .locks/<digest>.lock,
.access/<digest>, blobs/<digest>[.incomplete], refs/<name>/<tag>}``. A ref file holds a digest.
Bundles and bases share ``blobs/``; a blob only appears under its final name after its check
passed. ``.access/<digest>`` is an empty file whose mtime the client sets on every use of the
blob: the LRU order of ``prune`` comes from these records, not from atime, which ``relatime`` and
``noatime`` mounts stop updating. Locks are ``filelock`` locks (portable: no ``fcntl``).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from client._exceptions import IntegrityError, InvalidArgumentError
from mcnc_core.refs import DEFAULT_TAG, parse_ref, validate_name, validate_tag

__all__ = ["CacheEntry", "LocalCache", "sha256_file"]

_DIGEST = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"[0-9a-f]{8,64}")
_TAG_TEXT = "Signature: 8a477f597d28d172789f06886806bc55\n# This is a cache directory created by mcnc.\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    size: int
    kind: str  # "bundle", "safetensors" or "other"
    refs: list[str]
    last_access: float  # the access record's time (else when the blob entered the cache)


class LocalCache:
    """A cache directory; created on first write, so reading an absent cache needs no permissions."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _ensure(self) -> None:
        for sub in ("blobs", "refs", ".locks", ".access"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(_TAG_TEXT)

    def blob(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgumentError(f"not a sha256 digest: {digest!r}")
        return self.root / "blobs" / digest

    def has(self, digest: str) -> bool:
        return self.blob(digest).is_file()

    def touch(self, digest: str) -> None:
        """Record a use of ``digest`` now (its access record's mtime), for ``prune``'s LRU order."""
        self._ensure()
        record = self.root / ".access" / self.blob(digest).name
        record.touch()
        os.utime(record)  # an explicit time update, whatever the mount's atime policy

    def last_access(self, digest: str) -> float:
        """When ``digest`` was last used: its access record, else when its blob was written."""
        try:
            return (self.root / ".access" / digest).stat().st_mtime
        except FileNotFoundError:
            return self.blob(digest).stat().st_mtime

    def incomplete(self, digest: str) -> Path:
        self._ensure()
        return self.blob(digest).with_suffix(".incomplete")

    def file_lock(self, digest: str) -> FileLock:
        """The exclusive lock of ``digest``, so two processes never download the same blob at once.

        Not thread-local: ``AsyncClient`` acquires and releases it from worker threads.
        """
        self._ensure()
        return FileLock(self.root / ".locks" / f"{self.blob(digest).name}.lock", thread_local=False)

    def commit(self, digest: str, tmp: Path, *, digest_of: str, sha256: str | None = None) -> Path:
        """Move a finished download into place once its content matches ``digest``: the sha256
        of the file (``digest_of="file"``: bundles; ``sha256``: the one hashed while it streamed
        in, else the file is read again) or the ``mcnc_core.state_digest`` of its tensors
        (``"state"``: bases). Blobs in the cache are therefore verified once, on entry.

        Raises:
            IntegrityError: the digest differs or the file is unreadable (the partial file is deleted).
        """
        try:
            got = (sha256 or sha256_file(tmp)) if digest_of == "file" else _state_digest_file(tmp)
        except IntegrityError:
            tmp.unlink(missing_ok=True)
            raise
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"downloaded blob has {digest_of} digest {got}, expected {digest}")
        return self._place(digest, tmp)

    def _place(self, digest: str, tmp: Path) -> Path:
        final = self.blob(digest)
        os.replace(tmp, final)
        self.touch(digest)
        return final

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` (an upload) under its sha256; returns the digest."""
        self._ensure()
        digest = hashlib.sha256(data).hexdigest()
        fd, tmp = tempfile.mkstemp(dir=self.root / "blobs", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self._place(digest, Path(tmp))
        return digest

    def read_ref(self, name: str, tag: str) -> str | None:
        """The digest ``name:tag`` pointed at when last resolved, or ``None``."""
        path = self.root / "refs" / validate_name(name) / validate_tag(tag)
        try:
            digest = path.read_text().strip()
        except FileNotFoundError:
            return None
        return digest if _DIGEST.fullmatch(digest) else None

    def write_ref(self, name: str, tag: str, digest: str) -> None:
        self._ensure()
        folder = self.root / "refs" / validate_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, folder / validate_tag(tag))

    def _refs(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        refs = self.root / "refs"
        for path in sorted(refs.rglob("*")):  # refs/<name>/<tag> and refs/<org>/<name>/<tag>
            if path.is_file() and path.suffix != ".tmp":
                name = path.parent.relative_to(refs).as_posix()
                out.setdefault(path.read_text().strip(), []).append(f"{name}:{path.name}")
        return out

    def entries(self) -> list[CacheEntry]:
        """Every complete blob with its kind, size and the refs pointing at it."""
        if not (self.root / "blobs").is_dir():
            return []
        refs = self._refs()
        out = []
        for path in sorted((self.root / "blobs").iterdir()):
            if not _DIGEST.fullmatch(path.name):
                continue
            size = path.stat().st_size
            out.append(CacheEntry(path.name, size, _kind(path), refs.get(path.name, []), self.last_access(path.name)))
        return out

    def match_digest(self, target: str) -> str | None:
        """The full digest ``target`` names: 64 hex, ``sha256:``-prefixed, or a unique prefix of at
        least 8 hex digits of a cached blob (``mcnc cache ls`` prints 16). ``None``: not a digest.

        Raises:
            ValueError: the prefix matches several blobs (they are listed).
        """
        text = target[7:] if target[:7].lower() == "sha256:" else target
        text = text.lower()
        if _DIGEST.fullmatch(text):
            return text
        if not _PREFIX.fullmatch(text):
            return None
        blobs = self.root / "blobs"
        found = sorted(p.name for p in blobs.glob(f"{text}*") if _DIGEST.fullmatch(p.name)) if blobs.is_dir() else []
        if len(found) > 1:
            listed = ", ".join(d[:16] for d in found)
            raise InvalidArgumentError(f"{target!r} matches {len(found)} cached blobs ({listed}): give more digits")
        return found[0] if found else None

    def remove(self, target: str) -> list[str]:
        """Remove a blob (by digest or unique digest prefix) with the refs pointing at it, or one
        ref (``name[:tag]``).

        Returns:
            What was removed (digests and ``name:tag`` refs).
        """
        removed: list[str] = []
        digest = self.match_digest(target)
        if digest is not None:
            for ref in self._refs().get(digest, []):
                name, tag = ref.rsplit(":", 1)
                (self.root / "refs" / name / tag).unlink(missing_ok=True)
                removed.append(ref)
            (self.root / ".access" / digest).unlink(missing_ok=True)
            for path in (self.blob(digest), self.blob(digest).with_suffix(".incomplete")):
                if path.exists():
                    path.unlink()
                    removed.append(digest)
            return removed
        ref = parse_ref(target)
        name, tag = ref.name or "", ref.tag or DEFAULT_TAG
        path = self.root / "refs" / name / tag
        if path.exists():
            path.unlink()
            removed.append(f"{name}:{tag}")
        return removed

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> list[str]:
        """Remove partial downloads, then blobs not used for ``older_than`` seconds (0: all), then
        least recently used blobs (by their access records) until the cache holds at most ``max_bytes``.

        Returns:
            The digests (and partial files) removed.
        """
        removed = []
        for path in (self.root / "blobs").glob("*.incomplete") if (self.root / "blobs").is_dir() else []:
            path.unlink()
            removed.append(path.name)
        entries = sorted(self.entries(), key=lambda e: e.last_access)
        now = time.time()
        total = sum(e.size for e in entries)
        for e in entries:
            too_old = older_than is not None and now - e.last_access >= older_than
            too_big = max_bytes is not None and total > max_bytes
            if too_old or too_big:
                self.remove(e.digest)
                total -= e.size
                removed.append(e.digest)
        return removed


def _state_digest_file(path: Path) -> str:
    from client._local import state_digest_file  # torch loads here

    return state_digest_file(path)


def _kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8 + 4096)
    except OSError:
        return "other"
    if len(head) < 8:
        return "other"
    return "bundle" if b'"mcnc-bundle"' in head[8:] else "safetensors" if head[8:9] == b"{" else "other"
