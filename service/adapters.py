"""PEFT adapter files of delta bundles, exported once per bundle digest and kept in a byte-bounded LRU.

An export decodes only the low-rank factors (no base, no full weights), under the Reconstructor
(its slot and the export's whole reservation: factors of a hostile rank cannot run past the memory
budget). Every Hub request (model info, tree, HEAD and GET of each file) needs the files' sizes
and hashes, so the result is cached by bundle digest and computed once even when requests for it
arrive together (single flight per key). An adapter larger than the memory cache is kept on local
disk instead (``<spill dir>/<bundle digest>/<file sha256>``, under its own byte budget, LRU): its
sizes and hashes stay in memory and its bytes are read from disk, so it is exported once too
(without this every Hub request re-exported it). An adapter pushed out of the memory LRU moves to
that disk tier too (when it fits its budget), so reading it again is a disk read, not a second
export. Before any export, the Catalog makes sure the bundle does
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
import logging
import os
import queue
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
from service.errors import BundleNotFoundError, NotAnAdapterError, ServiceError
from service.hub.revcache import RevisionCache
from service.metrics import Metrics
from service.reconstructor import Reconstructor
from service.storage import BundleRecord

__all__ = ["ADAPTER_DTYPES", "AdapterFile", "AdapterStore", "EXACT_DTYPE"]

ADAPTER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
EXACT_DTYPE = "float32"  # what ``exact`` asks for: the factors as generated, no rounding


_READ_CHUNK = 1 << 20
_FACTS = 65_536  # task types remembered (a digest and a short string each)
_RENAMED = 4096  # renamed adapter configs remembered (~1 kB each)
PREFETCH_QUEUE = 8  # pushed adapters waiting for their background export; more are skipped
PREFETCH_MAX_BUNDLE = 64 << 20  # bundles larger than this are exported on first read only
log = logging.getLogger("mcnc.service")


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

    def file_range(self) -> tuple[BinaryIO, int, int] | None:
        """``(open file, start, end)`` of the bytes not yet read, for a file kept on disk (a
        zero-copy send); None for one in memory or once closed."""
        return None if self._handle is None else (self._handle, self._pos, self.end)

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
        self.revisions = RevisionCache()  # the Hub's answers about adapter revisions (service/hub/revcache.py)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._items: OrderedDict[str, dict[str, AdapterFile]] = OrderedDict()
        self.nbytes = 0
        self.disk_budget = disk_budget if disk_dir is not None else 0
        self._disk: OrderedDict[str, dict[str, AdapterFile]] = OrderedDict()
        self._moving: dict[str, dict[str, AdapterFile]] = {}  # evicted from memory, being written to disk
        # Per-digest facts asked for on every Hub request (bounded; a few hundred bytes each).
        self._task_types: OrderedDict[str, str | None] = OrderedDict()
        self._renamed: OrderedDict[tuple[str, str, str], AdapterFile] = OrderedDict()
        self.disk_nbytes = 0
        self._disk_dir: Path | None = None
        if self.disk_budget > 0 and disk_dir is not None:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self._disk_dir = Path(tempfile.mkdtemp(prefix="adapters-", dir=disk_dir))
        self._prefetch: queue.Queue[str | None] = queue.Queue(PREFETCH_QUEUE)
        self._prefetch_thread: threading.Thread | None = None
        self._closed = False
        catalog.on_ingest(self.prefetch)

    def prefetch(self, rec: BundleRecord, created: bool) -> None:
        """Queue the export of a delta just pushed (``Catalog.on_ingest``), so its first Hub read finds
        it exported; returns at once (the push's answer never waits for it). Bounded: one worker
        thread, ``PREFETCH_QUEUE`` waiting (a push finding the queue full is skipped: its adapter is
        exported on first read, as before), bundles over ``PREFETCH_MAX_BUNDLE`` skipped, nothing
        when no tier keeps exports. The export is ``files(digest)``: checked as any read (a bundle
        failing its fingerprint is not exported), under the Reconstructor's slots and budget, single
        flight with the requests, kept by the same LRU rules (it may push out the least recently
        used export, as a read does)."""
        if not created or rec.mode != "delta" or rec.size > PREFETCH_MAX_BUNDLE or self._closed:
            return
        if self.budget <= 0 and self.disk_budget <= 0:
            return
        with self._lock:
            if self._prefetch_thread is None:
                self._prefetch_thread = threading.Thread(
                    target=self._prefetch_loop, name="adapter-prefetch", daemon=True
                )
                self._prefetch_thread.start()
        try:
            self._prefetch.put_nowait(rec.digest)
        except queue.Full:
            log.debug("background export of sha256:%s skipped: %d already queued", rec.digest, PREFETCH_QUEUE)

    def _prefetch_loop(self) -> None:
        while (digest := self._prefetch.get()) is not None:
            try:
                self.files(digest)
            except ServiceError as exc:  # not an adapter, failed, busy, over budget: its first read says so
                log.info("background export of sha256:%s not done: %s (%s)", digest, exc.code, exc.message)
            except Exception:
                log.warning("background export of sha256:%s failed", digest, exc_info=True)
            finally:
                self._prefetch.task_done()
        self._prefetch.task_done()

    def wait_prefetched(self) -> None:
        """Block until every queued background export has run (tests, benchmarks)."""
        self._prefetch.join()

    def verification(self, digest: str) -> Verification:
        """Whether the adapter of ``digest`` comes from a bundle checked against its fingerprint:
        ``unverified`` for a delta whose base is not here (serve it flagged ``X-MCNC-Verified: false``)."""
        rec = self.catalog.record(digest)
        if rec is None:
            raise BundleNotFoundError(f"no bundle sha256:{digest}")
        return self.catalog.verification(rec)

    def files(
        self, digest: str, *, exact: bool = False, base_name: str | None = None, checked: bool = False
    ) -> dict[str, AdapterFile]:
        """The adapter files of bundle ``digest`` (exported on first use): factors in the server's
        dtype, or float32 with ``exact``; ``base_name``: the config's ``base_model_name_or_path``
        (None: the bundle's own base name, as exported). ``checked``: the caller has just run
        ``Catalog.ensure_verified`` on the bundle's record (it passed): not looked up and checked again.

        Raises:
            FingerprintMismatchError, InvalidBundleError: (422) the bundle fails its fingerprint (checked
                here once its base is registered; remembered).
            NotAnAdapterError: the bundle has no exact PEFT LoRA form (full mode, rank 0, ...).
            InsufficientMemoryError: the export needs more than the reconstruction memory budget.
        """
        if not checked:
            rec = self.catalog.record(digest)
            if rec is None:
                raise BundleNotFoundError(f"no bundle sha256:{digest}")
            self.catalog.ensure_verified(rec)  # nothing failing its fingerprint is served (N6)
        dtype = EXACT_DTYPE if exact else self.dtype
        key = self._key(digest, exact)
        with self._lock:
            hit = self._hit(key)
            key_lock = self._key_locks.setdefault(key, threading.Lock()) if hit is None else None
        if key_lock is None:
            assert hit is not None
            return self._named(key, hit, base_name)
        with key_lock:  # single flight: the first caller exports, the others wait for its result
            with self._lock:
                hit = self._hit(key)
            if hit is not None:
                return self._named(key, hit, base_name)
            try:
                files = self._put(key, self._export(digest, dtype))
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            return self._named(key, files, base_name)

    def task_type(self, digest: str) -> str | None:
        """The PEFT ``task_type`` of bundle ``digest`` (its config's), remembered per digest: model
        info asks for it on every request, and parsing the bundle again each time cost a blob read."""
        with self._lock:
            if digest in self._task_types:
                return self._task_types[digest]
        return self._remember_task_type(digest, self.catalog.bundle(digest).config.task_type)

    def _remember_task_type(self, digest: str, task_type: str | None) -> str | None:
        with self._lock:
            self._task_types[digest] = task_type
            while len(self._task_types) > _FACTS:
                self._task_types.popitem(last=False)
        return task_type

    def _named(self, key: str, files: dict[str, AdapterFile], base_name: str | None) -> dict[str, AdapterFile]:
        """``_named(files, base_name)``, the renamed config remembered per export and name (it was
        read from disk, parsed and hashed again on every request)."""
        cfg = files.get(ADAPTER_CONFIG)
        if base_name is None or cfg is None:
            return files
        memo = (key, cfg.sha256, base_name)
        with self._lock:
            renamed = self._renamed.get(memo)
        if renamed is None:
            renamed = _named(files, base_name)[ADAPTER_CONFIG]
            with self._lock:
                self._renamed[memo] = renamed
                while len(self._renamed) > _RENAMED:
                    self._renamed.popitem(last=False)
        return files if renamed is cfg else {**files, ADAPTER_CONFIG: renamed}

    def _key(self, digest: str, exact: bool) -> str:
        """The cache key of an export: the digest for the server's dtype, ``<digest>-float32`` for exact."""
        return f"{digest}-{EXACT_DTYPE}" if exact and self.dtype != EXACT_DTYPE else digest

    def _export(self, digest: str, dtype: str) -> dict[str, AdapterFile]:
        bundle = self.catalog.bundle(digest)
        self._remember_task_type(digest, bundle.config.task_type)
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
        """Stop the background exporter (after the export it is running) and remove the folder of
        adapters kept on disk."""
        self._closed = True
        thread = self._prefetch_thread
        if thread is not None:
            while True:  # drop what waits, then the sentinel
                try:
                    self._prefetch.get_nowait()
                    self._prefetch.task_done()
                except queue.Empty:
                    break
            self._prefetch.put(None)
            thread.join(timeout=30)
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
        return self._moving.get(digest)

    def _put(self, digest: str, files: dict[str, AdapterFile]) -> dict[str, AdapterFile]:
        """Keep an export: in memory if it fits the memory budget, else on disk. What it pushes out of
        memory moves to the disk tier (when that has room) instead of being dropped: an adapter read
        again after falling out of the memory LRU was exported again (seconds of CPU for a 7B one)."""
        size = sum(f.size for f in files.values())
        if size > self.budget:
            return self._put_disk(digest, files, size)
        evicted: list[tuple[str, dict[str, AdapterFile]]] = []
        with self._lock:
            while self.nbytes + size > self.budget and self._items:
                key, old = self._items.popitem(last=False)
                self.nbytes -= sum(f.size for f in old.values())
                self._moving[key] = old  # still found by ``_hit`` while it is written to disk
                evicted.append((key, old))
            self._items[digest] = files
            self.nbytes += size
        for key, old in evicted:
            kept = old
            try:
                kept = self._put_disk(key, old, sum(f.size for f in old.values()))
            finally:
                with self._lock:
                    if self._moving.pop(key, None) is None and kept is not old:
                        self._drop_disk(key)  # ``forget`` ran while it was written: not kept
            if kept is old:  # no disk tier, over its budget, or the disk failed: dropped
                self.metrics.evictions.labels("adapters").inc()
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
        """Drop every export of ``digest`` (each dtype), from memory and disk, and the Hub's cached
        revisions of it."""
        self.revisions.forget(digest)
        with self._lock:
            for key in (digest, f"{digest}-{EXACT_DTYPE}"):
                self._moving.pop(key, None)
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
