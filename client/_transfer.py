"""Resumable downloads (``.incomplete`` + Range/If-Range) and the checks before a file is final."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from client._exceptions import IntegrityError

__all__ = ["Partial", "bundle_base_digest", "bundle_metadata", "finish_download"]

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_MAX_HEADER = 32 << 20


class Partial:
    """A download in progress at ``path`` (``*.incomplete``), with a JSON sidecar remembering the
    server's ``ETag``, the total size and the advertised sha256, so a later call can resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sidecar = Path(f"{path}.json")
        meta = self._read_sidecar()
        self.etag: str | None = meta.get("etag")
        self.total: int | None = meta.get("total")
        self.sha256: str | None = meta.get("sha256")
        self.appending = False  # set by open(): the response continues what the file holds

    def _read_sidecar(self) -> dict[str, Any]:
        try:
            data = json.loads(self.sidecar.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def request_headers(self) -> dict[str, str]:
        """``Range`` + ``If-Range`` to resume; nothing (start over) without a remembered ETag."""
        if self.size and self.etag:
            return {"Range": f"bytes={self.size}-", "If-Range": self.etag}
        return {}

    @contextlib.contextmanager
    def open(self, status: int, headers: Any) -> Iterator[IO[bytes]]:
        """The file to write the response body to: appended on 206, truncated on 200 (the server
        ignored our If-Range because the ETag changed, or we did not ask for a range)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append = False
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
            if not m or int(m.group(1)) != self.size:
                raise IntegrityError(f"server resumed at {headers.get('content-range')!r}, we hold {self.size} bytes")
            append, total = True, int(m.group(3))
        else:  # a length that is not a number is no length: the safetensors framing checks the end
            length = (headers.get("content-length") or "").strip()
            total = int(length) if length.isdigit() else None
        self.etag, self.total, self.appending = headers.get("etag"), total, append
        self.sha256 = (headers.get("x-mcnc-weights-digest") or "").removeprefix("sha256:") or None
        self.sidecar.write_text(json.dumps({"etag": self.etag, "total": self.total, "sha256": self.sha256}))
        with open(self.path, "ab" if append else "wb") as f:
            yield f

    def check_complete(self) -> None:
        if self.total is not None and self.size != self.total:
            raise IntegrityError(f"download ended at {self.size} of {self.total} bytes")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.discard_sidecar()

    def discard_sidecar(self) -> None:
        self.sidecar.unlink(missing_ok=True)


def finish_download(partial: Partial, dest: Path, bundle_path: Path | None, sha256: str) -> float:
    """Check a completed weights download and rename it to ``dest`` atomically.

    Checks: the size and the safetensors framing (already, while it streamed in), the sha256
    (``sha256``, hashed as it streamed) when the server advertised one, and with a bundle every
    tensor against its fingerprint. A failed check deletes the partial file.

    Returns:
        Seconds spent verifying.
    """
    start = time.perf_counter()
    try:
        if partial.sha256 and sha256 != partial.sha256:
            raise IntegrityError(f"weights sha256 is {sha256}, the server advertised {partial.sha256}")
        if bundle_path is not None:
            from client._local import verify_weights_file

            verify_weights_file(partial.path, bundle_path)
    except IntegrityError:
        partial.discard()
        raise
    os.replace(partial.path, dest)
    partial.discard_sidecar()
    return time.perf_counter() - start


def bundle_metadata(path: Path) -> dict[str, str]:
    """A cached bundle's ``__metadata__`` (string to string), read from its header without torch.
    The strict reader validates the whole file when it is reconstructed.

    Raises:
        IntegrityError: the header is over 32 MiB or not JSON with a ``__metadata__`` object.
    """
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > _MAX_HEADER:
            raise IntegrityError(f"{path}: header of {n} bytes is over the limit")
        try:
            meta = json.loads(f.read(n)).get("__metadata__", {})
        except (ValueError, AttributeError) as exc:
            raise IntegrityError(f"{path}: not a readable bundle header: {exc}") from exc
    if not isinstance(meta, dict):
        raise IntegrityError(f"{path}: __metadata__ is not an object")
    return {str(k): str(v) for k, v in meta.items()}


def bundle_base_digest(path: Path) -> str | None:
    """The base digest a cached bundle references (``None`` for full mode), from its header."""
    base = bundle_metadata(path).get("base")
    try:
        return json.loads(base)["sha256"] if base else None
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: the base in its header is unreadable: {exc}") from exc
