"""PEFT adapter files of delta bundles, exported once per bundle digest and kept in a byte-bounded LRU.

An export decodes only the low-rank factors (no base, no full weights), under the Reconstructor
(its slot and the export's whole reservation: factors of a hostile rank cannot run past the memory
budget). Every Hub request (model info, tree, HEAD and GET of each file) needs the files' sizes
and hashes, so the result is cached by bundle digest and computed once even when requests for it
arrive together (single flight per key). Before any export, the Catalog makes sure the bundle does
not fail its fingerprint (checked once its base is here, failures remembered): nothing failing it
is served here either.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from mcnc_core.peft import ExportError
from service.catalog import Catalog, Verification
from service.errors import BundleNotFoundError, NotAnAdapterError
from service.metrics import Metrics
from service.reconstructor import Reconstructor

__all__ = ["ADAPTER_DTYPES", "AdapterFile", "AdapterStore"]

ADAPTER_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class AdapterFile:
    """One file of an adapter: its bytes, ``sha256`` (the ETag) and git blob ``oid`` (the Hub's tree id)."""

    name: str
    data: bytes
    sha256: str
    oid: str

    @classmethod
    def of(cls, name: str, data: bytes) -> AdapterFile:
        git_blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False)
        return cls(name, data, hashlib.sha256(data).hexdigest(), git_blob.hexdigest())


class AdapterStore:
    """Exported adapters by bundle digest; runs in worker threads only (torch)."""

    def __init__(
        self, catalog: Catalog, reconstructor: Reconstructor, metrics: Metrics, *, dtype: str, budget: int
    ) -> None:
        self.catalog, self.reconstructor, self.metrics = catalog, reconstructor, metrics
        self.dtype, self.budget = dtype, budget
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._items: OrderedDict[str, dict[str, AdapterFile]] = OrderedDict()
        self.nbytes = 0

    def verification(self, digest: str) -> Verification:
        """Whether the adapter of ``digest`` comes from a bundle checked against its fingerprint:
        ``unverified`` for a delta whose base is not here (serve it flagged ``X-MCNC-Verified: false``)."""
        rec = self.catalog.record(digest)
        if rec is None:
            raise BundleNotFoundError(f"no bundle sha256:{digest}")
        return self.catalog.verification(rec)

    def files(self, digest: str) -> dict[str, AdapterFile]:
        """The adapter files of bundle ``digest`` (exported on first use).

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
        with self._lock:
            hit = self._items.get(digest)
            if hit is not None:
                self._items.move_to_end(digest)
                return hit
            key_lock = self._key_locks.setdefault(digest, threading.Lock())
        with key_lock:  # single flight: the first caller exports, the others wait for its result
            with self._lock:
                hit = self._items.get(digest)
            if hit is not None:
                return hit
            try:
                files = self._export(digest)
                self._put(digest, files)
            finally:
                with self._lock:
                    self._key_locks.pop(digest, None)
            return files

    def _export(self, digest: str) -> dict[str, AdapterFile]:
        bundle = self.catalog.bundle(digest)
        try:
            contents = self.reconstructor.adapter_files(bundle, ADAPTER_DTYPES[self.dtype])
        except ExportError as exc:
            raise NotAnAdapterError(f"bundle sha256:{digest} is not a PEFT LoRA adapter: {exc}") from exc
        return {name: AdapterFile.of(name, data) for name, data in contents.items()}

    def _put(self, digest: str, files: dict[str, AdapterFile]) -> None:
        size = sum(len(f.data) for f in files.values())
        if size > self.budget:
            return
        with self._lock:
            while self.nbytes + size > self.budget and self._items:
                _, old = self._items.popitem(last=False)
                self.nbytes -= sum(len(f.data) for f in old.values())
                self.metrics.evictions.labels("adapters").inc()
            self._items[digest] = files
            self.nbytes += size

    def forget(self, digest: str) -> None:
        with self._lock:
            old = self._items.pop(digest, None)
            if old is not None:
                self.nbytes -= sum(len(f.data) for f in old.values())
