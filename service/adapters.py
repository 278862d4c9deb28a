"""PEFT adapter files of delta bundles, exported once per bundle digest and kept in a byte-bounded LRU.

An export decodes only the low-rank factors (no base, no full weights), under the Reconstructor
(its slot and the export's whole reservation: factors of a hostile rank cannot run past the memory
budget). Every Hub request (model info, tree, HEAD and GET of each file) needs the files' sizes
and hashes, so the result is cached by bundle digest and computed once even when requests for it
arrive together (single flight per key). An adapter larger than the memory cache is kept on local
disk instead (``<spill dir>/<bundle digest>/<file sha256>``, under its own byte budget, LRU): its
sizes and hashes stay in memory and its bytes are read from disk, so it is exported once too
(without this every Hub request re-exported it). Before any export, the Catalog makes sure the bundle does
not fail its fingerprint (checked once its base is here, failures remembered): nothing failing it
is served here either.

Exports are kept per ``(digest, dtype)``: the server's ``MCNC_ADAPTER_DTYPE`` (bfloat16 by default)
and float32 on request (``exact``, the Hub revision ``<rev>:float32``). ``base_model_name_or_path``
is set per request (``base_name``: the repo name the delta's base is registered under, which can
change after the export): only the small ``adapter_config.json`` is rewritten, as
``peft_adapter_files(base_model_name_or_path=...)`` would write it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import torch

from mcnc_core.peft import ADAPTER_CONFIG, ExportError
from service.catalog import Catalog, Verification
from service.errors import BundleNotFoundError, NotAnAdapterError
from service.metrics import Metrics
from service.reconstructor import Reconstructor

__all__ = ["ADAPTER_DTYPES", "AdapterFile", "AdapterStore", "EXACT_DTYPE"]

ADAPTER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
EXACT_DTYPE = "float32"  # what ``exact`` asks for: the factors as generated, no rounding


_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class AdapterFile:
    """One file of an adapter: its ``size``, ``sha256`` (the ETag), git blob ``oid`` (the Hub's tree id),
    and its bytes: in memory (``data``) or in a local file (``path``, an adapter kept on disk)."""

    name: str
    size: int
    sha256: str
    oid: str
    data: bytes | None = None
    path: Path | None = None

    @classmethod
    def of(cls, name: str, data: bytes) -> AdapterFile:
        git_blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False)
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), git_blob.hexdigest(), data=data)


class AdapterBody:
    """The bytes ``[start, end)`` of one adapter file as an iterator, opened before the response starts
    (a file kept on disk stays readable while it is sent even if it is evicted meanwhile: POSIX unlink
    semantics). ``close`` closes the file at once, read to the end or not."""

    def __init__(self, f: AdapterFile, start: int, end: int, handle: BinaryIO | None) -> None:
        self.file, self._pos, self.end, self._handle = f, start, end, handle
        if handle is not None:
            handle.seek(start)

    def __iter__(self) -> AdapterBody:
        return self

    def __next__(self) -> bytes:
        if self._pos >= self.end:
            self.close()
            raise StopIteration
        if self._handle is None:
            assert self.file.data is not None
            piece = self.file.data[self._pos : self.end]
        else:
            piece = self._handle.read(min(self.end - self._pos, _READ_CHUNK))
            if not piece:
                self.close()
                raise OSError(f"adapter file {self.file.name} was truncated on disk")
        self._pos += len(piece)
        return piece

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class AdapterStore:
    """Exported adapters by bundle digest; runs in worker threads only (torch)."""

    def __init__(
        self,
        catalog: Catalog,
        reconstructor: Reconstructor,
        metrics: Metrics,
        *,
        dtype: str,
        budget: int,
        disk_dir: Path | None = None,
        disk_budget: int = 0,
    ) -> None:
        """``budget``: bytes of adapters kept in memory; ``disk_budget``: bytes of larger ones kept in a
        fresh private folder under ``disk_dir`` (removed by ``close``); 0 or no ``disk_dir``: none."""
        self.catalog, self.reconstructor, self.metrics = catalog, reconstructor, metrics
        self.dtype, self.budget = dtype, budget
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._items: OrderedDict[str, dict[str, AdapterFile]] = OrderedDict()
        self.nbytes = 0
        self.disk_budget = disk_budget if disk_dir is not None else 0
        self._disk: OrderedDict[str, dict[str, AdapterFile]] = OrderedDict()
        self.disk_nbytes = 0
        self._disk_dir: Path | None = None
        if self.disk_budget > 0 and disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self._disk_dir = Path(tempfile.mkdtemp(prefix="adapters-", dir=disk_dir))

    def verification(self, digest: str) -> Verification:
        """Whether the adapter of ``digest`` comes from a bundle checked against its fingerprint:
        ``unverified`` for a delta whose base is not here (serve it flagged ``X-MCNC-Verified: false``)."""
        rec = self.catalog.record(digest)
        if rec is None:
            raise BundleNotFoundError(f"no bundle sha256:{digest}")
        return self.catalog.verification(rec)

    def files(self, digest: str, *, exact: bool = False, base_name: str | None = None) -> dict[str, AdapterFile]:
        """The adapter files of bundle ``digest`` (exported on first use): factors in the server's
        dtype, or float32 with ``exact``; ``base_name``: the config's ``base_model_name_or_path``
        (None: the bundle's own base name, as exported).

        Raises:
            FingerprintMismatchError, InvalidBundleError: (422) the bundle fails its fingerprint (checked
                here once its base is registered; remembered).
            NotAnAdapterError: the bundle has no exact PEFT LoRA form (full mode, rank 0, ...).
            InsufficientMemoryError: the export needs more than the reconstruction memory budget.
        """
        rec = self.catalog.record(digest)
        if rec is None:
            raise BundleNotFoundError(f"no bundle sha256:{digest}")
        self.catalog.ensure_verified(rec)  # nothing failing its fingerprint is served (N6)
        dtype = EXACT_DTYPE if exact else self.dtype
        key = self._key(digest, exact)
        with self._lock:
            hit = self._hit(key)
            if hit is not None:
                return _named(hit, base_name)
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # single flight: the first caller exports, the others wait for its result
            with self._lock:
                hit = self._hit(key)
            if hit is not None:
                return _named(hit, base_name)
            try:
                files = self._put(key, self._export(digest, dtype))
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            return _named(files, base_name)

    def _key(self, digest: str, exact: bool) -> str:
        """The cache key of an export: the digest for the server's dtype, ``<digest>-float32`` for exact."""
        return f"{digest}-{EXACT_DTYPE}" if exact and self.dtype != EXACT_DTYPE else digest

    def _export(self, digest: str, dtype: str) -> dict[str, AdapterFile]:
        bundle = self.catalog.bundle(digest)
        try:
            contents = self.reconstructor.adapter_files(bundle, ADAPTER_DTYPES[dtype])
        except ExportError as exc:
            raise NotAnAdapterError(f"bundle sha256:{digest} is not a PEFT LoRA adapter: {exc}") from exc
        return {name: AdapterFile.of(name, data) for name, data in contents.items()}

    def open(
        self, digest: str, f: AdapterFile, start: int, end: int, *, exact: bool = False, base_name: str | None = None
    ) -> AdapterBody:
        """The body ``[start, end)`` of ``f`` (from ``files(digest, exact=..., base_name=...)``), opened
        now. A file kept on disk that was evicted since ``files`` answered is exported again (same bytes:
        exports are exact)."""
        if f.path is None:
            return AdapterBody(f, start, end, None)
        try:
            return AdapterBody(f, start, end, f.path.open("rb"))
        except FileNotFoundError:
            with self._lock:
                self._drop_disk(self._key(digest, exact))
            again = self.files(digest, exact=exact, base_name=base_name)[f.name]
            return AdapterBody(again, start, end, again.path.open("rb") if again.path is not None else None)

    def close(self) -> None:
        """Remove the folder of adapters kept on disk."""
        with self._lock:
            self._disk.clear()
            self.disk_nbytes = 0
            if self._disk_dir is not None:
                shutil.rmtree(self._disk_dir, ignore_errors=True)

    def _hit(self, digest: str) -> dict[str, AdapterFile] | None:
        """Under ``_lock``: the cached files of ``digest`` (memory, then disk), marked recently used."""
        for tier in (self._items, self._disk):
            hit = tier.get(digest)
            if hit is not None:
                tier.move_to_end(digest)
                return hit
        return None

    def _put(self, digest: str, files: dict[str, AdapterFile]) -> dict[str, AdapterFile]:
        size = sum(f.size for f in files.values())
        if size > self.budget:
            return self._put_disk(digest, files, size)
        with self._lock:
            while self.nbytes + size > self.budget and self._items:
                _, old = self._items.popitem(last=False)
                self.nbytes -= sum(f.size for f in old.values())
                self.metrics.evictions.labels("adapters").inc()
            self._items[digest] = files
            self.nbytes += size
        return files

    def _put_disk(self, digest: str, files: dict[str, AdapterFile], size: int) -> dict[str, AdapterFile]:
        """Keep an adapter too large for memory on disk; one over the disk budget too is not kept."""
        if self._disk_dir is None or size > self.disk_budget:
            return files
        with self._lock:
            while self.disk_nbytes + size > self.disk_budget and self._disk:
                self._drop_disk(next(iter(self._disk)))
                self.metrics.evictions.labels("adapters").inc()
            self.disk_nbytes += size  # reserved before writing: concurrent exports stay within budget
        folder = self._disk_dir / digest
        try:
            folder.mkdir(exist_ok=True)
            kept: dict[str, AdapterFile] = {}
            for name, f in files.items():
                assert f.data is not None
                path = folder / f.sha256
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(f.data)
                os.replace(tmp, path)  # a reader never sees a half-written file
                kept[name] = replace(f, data=None, path=path)
        except OSError:
            with self._lock:
                self.disk_nbytes -= size
            shutil.rmtree(folder, ignore_errors=True)
            return files  # the disk failed: serve this export from memory, keep nothing
        with self._lock:
            self._disk[digest] = kept
        return kept

    def _drop_disk(self, digest: str) -> None:
        """Under ``_lock``: forget the on-disk copy of ``digest`` and delete its files."""
        old = self._disk.pop(digest, None)
        if old is not None:
            self.disk_nbytes -= sum(f.size for f in old.values())
            if self._disk_dir is not None:
                shutil.rmtree(self._disk_dir / digest, ignore_errors=True)

    def forget(self, digest: str) -> None:
        """Drop every export of ``digest`` (each dtype), from memory and disk."""
        with self._lock:
            for key in (digest, f"{digest}-{EXACT_DTYPE}"):
                old = self._items.pop(key, None)
                if old is not None:
                    self.nbytes -= sum(f.size for f in old.values())
                self._drop_disk(key)


def _named(files: dict[str, AdapterFile], base_name: str | None) -> dict[str, AdapterFile]:
    """``files`` with ``base_model_name_or_path = base_name`` in ``adapter_config.json`` (bytes as
    ``peft_adapter_files`` writes them: sorted keys, indent 2, newline); unchanged for None."""
    cfg = files.get(ADAPTER_CONFIG)
    if base_name is None or cfg is None:
        return files
    data = cfg.data if cfg.data is not None else cfg.path.read_bytes() if cfg.path is not None else b"{}"
    config = json.loads(data)
    if config.get("base_model_name_or_path") == base_name:
        return files
    config["base_model_name_or_path"] = base_name
    renamed = AdapterFile.of(ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return {**files, ADAPTER_CONFIG: renamed}
