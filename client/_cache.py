"""The local content-addressed cache: ``blobs/<sha256>``, ``refs/<name>/<tag>``, ``.locks/``.

Layout (as the Hugging Face Hub client's): ``$MCNC_CACHE_DIR/{CACHEDIR.TAG, .locks/<digest>.lock,
blobs/<digest>[.incomplete], refs/<name>/<tag>}``. A ref file holds a digest. Bundles and bases
share ``blobs/``; a blob only appears under its final name after its check passed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from client._exceptions import IntegrityError

__all__ = ["CacheEntry", "LocalCache", "sha256_file"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_PATTERNS = {"name": re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})?$"), "tag": re.compile(rf"^{_SEGMENT}$")}
_TAG_TEXT = "Signature: 8a477f597d28d172789f06886806bc55\n# This is a cache directory created by mcnc.\n"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_name(kind: str, value: str) -> str:
    """A ``name`` (``name`` or ``org/name``, as the server's) or ``tag``; ``ValueError`` otherwise."""
    if not _PATTERNS[kind].match(value) or "resolve" in value.split("/"):
        org = ", optionally after one 'org/'" if kind == "name" else ""
        raise ValueError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' and '-'{org}, not 'resolve' (no path characters)"
        )
    return value


@dataclass(frozen=True)
class CacheEntry:
    digest: str
    size: int
    kind: str  # "bundle", "safetensors" or "other"
    refs: list[str]
    last_access: float


class LocalCache:
    """A cache directory; created on first write, so reading an absent cache needs no permissions."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _ensure(self) -> None:
        for sub in ("blobs", "refs", ".locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(_TAG_TEXT)

    def blob(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / "blobs" / digest

    def has(self, digest: str) -> bool:
        return self.blob(digest).is_file()

    def incomplete(self, digest: str) -> Path:
        self._ensure()
        return self.blob(digest).with_suffix(".incomplete")

    @contextlib.contextmanager
    def lock(self, digest: str) -> Iterator[None]:
        """An exclusive lock per digest, so two processes never download the same blob at once."""
        self._ensure()
        with open(self.root / ".locks" / f"{digest}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def commit(self, digest: str, tmp: Path, *, digest_of: str) -> Path:
        """Move a finished download into place once its content matches ``digest``: the sha256
        of the file (``digest_of="file"``: bundles) or the ``mcnc_core.state_digest`` of its
        tensors (``"state"``: bases). Blobs in the cache are therefore verified once, on entry.

        Raises:
            IntegrityError: the digest differs or the file is unreadable (the partial file is deleted).
        """
        try:
            got = sha256_file(tmp) if digest_of == "file" else _state_digest_file(tmp)
        except IntegrityError:
            tmp.unlink(missing_ok=True)
            raise
        if got != digest:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"downloaded blob has {digest_of} digest {got}, expected {digest}")
        final = self.blob(digest)
        os.replace(tmp, final)
        return final

    def put_bytes(self, digest: str, data: bytes) -> Path:
        self._ensure()
        fd, tmp = tempfile.mkstemp(dir=self.root / "blobs", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.commit(digest, Path(tmp), digest_of="file")

    def read_ref(self, name: str, tag: str) -> str | None:
        path = self.root / "refs" / check_name("name", name) / check_name("tag", tag)
        try:
            digest = path.read_text().strip()
        except FileNotFoundError:
            return None
        return digest if _DIGEST.match(digest) else None

    def write_ref(self, name: str, tag: str, digest: str) -> None:
        self._ensure()
        folder = self.root / "refs" / check_name("name", name)
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(digest)
        os.replace(tmp, folder / check_name("tag", tag))

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
            if not _DIGEST.match(path.name):
                continue
            st = path.stat()
            out.append(CacheEntry(path.name, st.st_size, _kind(path), refs.get(path.name, []), st.st_atime))
        return out

    def remove(self, target: str) -> list[str]:
        """Remove a blob (by digest) with the refs pointing at it, or one ref (``name[:tag]``).

        Returns:
            What was removed (digests and ``name:tag`` refs).
        """
        removed: list[str] = []
        digest = target.removeprefix("sha256:")
        if _DIGEST.match(digest):
            for ref in self._refs().get(digest, []):
                name, tag = ref.split(":")
                (self.root / "refs" / name / tag).unlink(missing_ok=True)
                removed.append(ref)
            for path in (self.blob(digest), self.blob(digest).with_suffix(".incomplete")):
                if path.exists():
                    path.unlink()
                    removed.append(digest)
            return removed
        name, _, tag = target.partition(":")
        path = self.root / "refs" / check_name("name", name) / check_name("tag", tag or "latest")
        if path.exists():
            path.unlink()
            removed.append(f"{name}:{tag or 'latest'}")
        return removed

    def prune(self, *, max_bytes: int | None = None, older_than: float | None = None) -> list[str]:
        """Remove partial downloads, then blobs not used for ``older_than`` seconds, then least
        recently used blobs until the cache holds at most ``max_bytes``.

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
            too_old = older_than is not None and now - e.last_access > older_than
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
