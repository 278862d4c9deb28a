"""``Catalog``: the bundles and bases this server holds — ingest, parse once, verify once, delete.

Rules it keeps (every route inherits them by asking it):

- **Ingest** of a bundle runs validation (the strict reader under ``Reconstructor.read_limits``),
  limits (names, metadata, the largest reservation against the memory budget), verification (up to
  ``MCNC_VERIFY_MAX_PARAMS`` when the base is here), then metadata and blob store. Nothing failing
  any step is stored; the temp file never survives.
- **Parse once**: ``bundle(digest)`` keeps parsed bundles in a small LRU; a route takes the object
  once and keeps it for its whole response, so a delete racing a stream never cuts it (issue 19 N5).
- **Verify once, remember the outcome**: a stored bundle not yet checked (over the verify limit, or a
  delta stored before its base) is checked in full on first use once its base is here; a pass is
  recorded in its row (``verified_at``), a failure too (``verification_failed_at`` and the answer
  given, migration 0005: a restart or another replica remembers it; this process also keeps it in
  ``failed``), and nothing that failed is served by any route again (N6). When a base arrives,
  ``verify_waiting`` checks the deltas stored before it (up to ``MCNC_VERIFY_MAX_PARAMS``; larger
  ones on first use). A delta whose base is not here is ``unverified``: its
  adapter may be served, flagged as such (``verification``).
- **Errors**: core errors become service errors here, once (``InvalidBundleError``,
  ``LimitExceededError``, ``FingerprintMismatchError``...).

The Catalog reaches stores; it decodes only through the ``Reconstructor``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

from safetensors import safe_open
from torch import Tensor

import mcnc_core
from mcnc_core.bundle import Bundle, ReadLimits
from mcnc_core.fingerprint import state_digest_file
from service.config import Settings
from service.errors import (
    BaseNotFoundError,
    ConflictError,
    FingerprintMismatchError,
    InsufficientMemoryError,
    InvalidBaseError,
    InvalidBundleError,
    InvalidRequestError,
    LimitExceededError,
    ServiceError,
)
from service.reconstructor import Reconstructor
from service.schemas import BasePublic, BundlePublic, SidecarPublic, TagPublic
from service.storage import BaseRecord, BundleRecord, Staged, Store, commit_id

__all__ = ["TAGS_IN_RECORD", "Catalog", "Verification", "check_bundle_names"]

TAGS_IN_RECORD = 100  # a bundle's record lists this many of its tags; GET /models?digest= pages through all
Verification = Literal["verified", "unverified", "failed"]
log = logging.getLogger("mcnc.service")
_PARSED = 16  # parsed bundles kept (LRU)
_FAILED = 10_000  # failed verifications remembered (LRU): digests only, a few MB at most
# Characters no tensor name or metadata value may hold: control characters (NUL, newline...) end up in
# headers, file names and logs.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored and sent back as JSON, or None: a lone surrogate (``\\ud800``)
    is not UTF-8, and a record holding one could never be rendered again."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds {value[exc.start : exc.end]!r} at {exc.start}, which is not valid UTF-8 (a lone surrogate)"
    return None


def check_bundle_names(bundle: Bundle) -> None:
    """Tensor names, base name and ``x-`` metadata must be valid UTF-8 text, and names free of control
    characters (N9, N12: they go into response headers, adapter files and JSON records).

    Raises:
        InvalidBundleError: naming the field and the character.
    """
    fields: list[tuple[str, str]] = [(f"tensor name {e.name!r}", e.name) for e in bundle.manifest]
    if bundle.base is not None and bundle.base.name is not None:
        fields.append(("base name", bundle.base.name))
    for what, value in fields:
        problem = _text_problem(value) or (
            f"holds the control character {m.group()!r}" if (m := _CONTROL.search(value)) else None
        )
        if problem:
            raise InvalidBundleError(f"{what} {problem}: rename it and export the bundle again")
    for key, value in bundle.metadata.items():
        problem = _text_problem(key) or _text_problem(value)
        if problem:
            raise InvalidBundleError(
                f"metadata {key.encode('utf-8', 'backslashreplace').decode()!r} {problem}: metadata must be UTF-8 text"
            )


_FAILURE_TYPES: dict[str, type[ServiceError]] = {
    FingerprintMismatchError.code: FingerprintMismatchError,
    InvalidBundleError.code: InvalidBundleError,
}


def _stored_failure(rec: BundleRecord) -> ServiceError:
    """The error recorded with ``rec``'s failed verification (422 ``fingerprint_mismatch`` when its
    text is unreadable: a failure is a failure)."""
    try:
        data = json.loads(rec.verification_error or "")
        return _FAILURE_TYPES.get(data["code"], FingerprintMismatchError)(str(data["message"]))
    except (ValueError, KeyError, TypeError):
        return FingerprintMismatchError(f"sha256:{rec.digest} failed its fingerprint check")


class _LazyBase(Mapping[str, Tensor]):
    """A registered base file read one tensor at a time (bounded memory)."""

    def __init__(self, path: Path) -> None:
        self._f: Any = cast(Any, safe_open(str(path), framework="pt"))
        self._keys = list(self._f.keys())

    def close(self) -> None:
        self._f.__exit__(None, None, None)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._keys:
            raise KeyError(name)
        t: Tensor = self._f.get_tensor(name)
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class Catalog:
    """Bundles and bases held here; runs in worker threads only (disk, database, torch)."""

    def __init__(self, settings: Settings, store: Store, reconstructor: Reconstructor) -> None:
        self.settings, self.store, self.reconstructor = settings, store, reconstructor
        self._lock = threading.Lock()
        self._parsed: OrderedDict[str, Bundle] = OrderedDict()
        self._failed: OrderedDict[str, ServiceError] = OrderedDict()
        self._verify_locks: dict[str, threading.Lock] = {}
        self._on_delete: list[Callable[[str], None]] = []
        self._on_ingest: list[Callable[[BundleRecord, bool], None]] = []
        # Stored bytes were checked under the upload limits; a later, lower upload limit must not make
        # them unreadable.
        self._stored_limits = ReadLimits(max_bytes=max(ReadLimits().max_bytes, settings.max_upload_bytes))

    def on_delete(self, forget: Callable[[str], None]) -> None:
        """Call ``forget(digest)`` after a bundle is deleted (caches built on it drop it)."""
        self._on_delete.append(forget)

    def on_ingest(self, stored: Callable[[BundleRecord, bool], None]) -> None:
        """Call ``stored(record, created)`` after a push is stored, in the push's worker thread before
        its answer: it must only note the bundle (the adapter store queues a background export), never
        block or raise."""
        self._on_ingest.append(stored)

    # records and parsed bundles
    def record(self, digest: str | None) -> BundleRecord | None:
        return self.store.meta.get_bundle(digest) if digest else None

    def base_here(self, rec: BundleRecord) -> bool:
        """Full mode, or a delta whose base is registered."""
        return rec.base_sha256 is None or self.store.meta.get_base(rec.base_sha256) is not None

    def bundle(self, digest: str) -> Bundle:
        """The parsed bundle (parsed once; a small LRU keeps hot ones)."""
        with self._lock:
            hit = self._parsed.get(digest)
            if hit is not None:
                self._parsed.move_to_end(digest)
                return hit
        bundle = mcnc_core.load_bundle(self.store.bundle_bytes(digest), limits=self._stored_limits)
        self._remember(digest, bundle)
        return bundle

    def _remember(self, digest: str, bundle: Bundle) -> None:
        with self._lock:
            self._parsed[digest] = bundle
            self._parsed.move_to_end(digest)
            while len(self._parsed) > _PARSED:
                self._parsed.popitem(last=False)

    @contextmanager
    def open_base(self, bundle: Bundle) -> Iterator[Mapping[str, Tensor] | None]:
        """The base tensors a delta reads (one at a time from its file), None for full mode.

        Raises:
            BaseNotFoundError: a delta whose base is not registered.
        """
        if bundle.base is None:
            yield None
            return
        rec = self.store.meta.get_base(bundle.base.sha256)
        if rec is None:
            raise BaseNotFoundError(f"the base sha256:{bundle.base.sha256} of the bundle is not registered")
        base = _LazyBase(self.store.base_file(rec))
        try:
            yield base
        finally:
            base.close()

    def public(self, rec: BundleRecord) -> BundlePublic:
        """The JSON record of ``rec``, with its first ``TAGS_IN_RECORD`` tags and their total count."""
        page, total = self.store.meta.list_tags(limit=TAGS_IN_RECORD, offset=0, digest=rec.digest)
        return BundlePublic(
            id=rec.digest,
            digest=f"sha256:{rec.digest}",
            size=rec.size,
            num_params=rec.num_params,
            reconstructed_bytes=rec.reconstructed_nbytes,
            stored_numbers=rec.stored_numbers,
            compression_ratio=rec.reconstructed_nbytes / max(rec.size, 1),
            mode=rec.mode,
            base=rec.base_sha256,
            created_at=rec.created_at,
            metadata=rec.metadata,
            tags=[TagPublic(**vars(t)) for t in page],
            tag_count=total,
            tags_truncated=total > len(page),
        )

    # ingest
    def _parse_upload(self, path: Path) -> Bundle:
        limits = self.reconstructor.read_limits()
        try:
            bundle = mcnc_core.load_bundle(path, limits=limits)
        except mcnc_core.BundleLimitError as exc:
            raise LimitExceededError(
                f"bundle refused: {exc} (MCNC_MAX_PARAMS={self.settings.max_params}; a tensor may have up to "
                f"{limits.max_tensor_params:,} parameters and decode up to {limits.max_factor_params:,} factor "
                f"numbers under MCNC_RECONSTRUCTION_MEMORY_BYTES={self.reconstructor.budget.total})"
            ) from exc
        except mcnc_core.MCNCError as exc:
            raise InvalidBundleError(f"not a valid MCNC bundle ({type(exc).__name__}): {exc}") from exc
        check_bundle_names(bundle)
        try:
            self.reconstructor.check_fits(bundle)
        except InsufficientMemoryError as exc:
            raise LimitExceededError(f"bundle refused: {exc.message}") from exc
        return bundle

    def ingest(
        self, tmp: Staged, name: str | None, tag: str, files: dict[str, str] | None = None
    ) -> tuple[BundleRecord, bool]:
        """Validate, bound and (up to ``verify_max_params``, base here) verify a staged upload, then store
        blob and metadata (optionally tagging it ``name:tag``); ``(record, created)``.

        A delta is accepted without its base: clients that hold the base reconstruct locally and
        adapters need none; it is verified when first used after its base arrives.

        Raises:
            LimitExceededError, InvalidBundleError, FingerprintMismatchError: nothing stored.
        """
        try:
            digest = tmp.finish()
            rec = self.store.meta.get_bundle(digest)
            if rec is None:  # new bytes (stored bytes were validated before)
                bundle = self._parse_upload(tmp.path)
                verified_at = None
                base_here = bundle.base is None or self.store.meta.get_base(bundle.base.sha256) is not None
                if base_here and bundle.num_params <= self.settings.verify_max_params:
                    self._verify(digest, bundle)  # 422, nothing stored
                    verified_at = time.time()
                rec = BundleRecord(
                    digest=digest,
                    size=tmp.size,
                    num_params=bundle.num_params,
                    reconstructed_nbytes=bundle.reconstructed_nbytes,
                    stored_numbers=bundle.stored_numbers,
                    mode=bundle.mode,
                    base_sha256=bundle.base.sha256 if bundle.base else None,
                    base_name=bundle.base.name if bundle.base else None,
                    created_at=time.time(),
                    metadata_json=json.dumps(bundle.metadata, sort_keys=True),
                    verified_at=verified_at,
                )
                self._remember(digest, bundle)
            # Also for stored bytes: the store re-checks the blob inside the transaction, so an upload
            # racing a delete of the same digest ends with both row and blob (or neither).
            # ``files``: sidecars attached to the tag (service/hub/sidecars.py), in the tag's transaction.
            stored = self.store.add_bundle(tmp, rec, tag=(name, tag) if name is not None else None, files=files)
        finally:
            tmp.discard()
        for note in self._on_ingest:
            try:
                note(*stored)
            except Exception:  # a hook must never fail a push that is stored
                log.warning("an ingest hook failed for sha256:%s", stored[0].digest, exc_info=True)
        return stored

    def check_base_name(self, name: str, files: dict[str, str]) -> None:
        """Refuse a base repo name before its upload is read: ``name`` must not be a bundle repo and
        every ``files`` sha256 must be stored (the registration's transaction checks both again).

        Raises:
            ConflictError: ``name`` has tags (it is a bundle repo).
            InvalidRequestError: a file not uploaded with ``POST /files``.
        """
        if self.store.meta.tags_named(name, limit=1):
            raise ConflictError(
                f"{name!r} is a bundle repo (it has tags); register the base under another name, "
                f"or remove the repo's tags first (DELETE /models/{name}:<tag>)"
            )
        missing = sorted(f"{f}:{sha}" for f, sha in files.items() if self.store.meta.get_file(sha) is None)
        if missing:
            raise InvalidRequestError(
                f"file {missing[0]} is not stored here: upload its bytes with POST /files first "
                f"({len(missing)} missing)"
            )

    def ingest_base(
        self, tmp: Staged, name: str | None = None, files: dict[str, str] | None = None
    ) -> tuple[BaseRecord, bool]:
        """Register a staged base file (addressed by the ``state_digest`` of its tensors) and, with
        ``name``, point that repo name at it with the sidecar ``files`` (file name -> sha256 of a file
        from ``POST /files``), in the same transaction. Re-registering a name moves it (and replaces
        its files): a base repo has one revision, ``main``.

        Raises:
            InvalidBaseError: not a safetensors file the digest can be computed from.
            ConflictError: ``name`` is a bundle repo; InvalidRequestError: a file not stored. Nothing
            is registered then.
        """
        try:
            file_sha = tmp.finish()
            try:
                digest, n_tensors, n_params = state_digest_file(tmp.path)
            except mcnc_core.MCNCError as exc:
                raise InvalidBaseError(str(exc)) from exc
            except Exception as exc:  # safetensors raises its own error types for malformed files
                raise InvalidBaseError(f"not a valid safetensors file: {exc}") from exc
            if name is not None:  # refused before the blob is written (the transaction checks again)
                self.check_base_name(name, files or {})
            rec = self.store.meta.get_base(digest) or BaseRecord(
                digest, file_sha, tmp.size, n_tensors, n_params, time.time()
            )
            return self.store.add_base(tmp, rec, name=name, files=files)
        finally:
            tmp.discard()

    def base_public(self, rec: BaseRecord, name: str | None, files: dict[str, str]) -> BasePublic:
        """The JSON record of a base just registered (under ``name`` with ``files``, if given): its
        repo name, Hub commit id and sidecar files as this request set them."""
        sidecars = []
        for filename, sha in sorted(files.items()):
            stored = self.store.meta.get_file(sha)  # content-addressed: its size never changes
            sidecars.append(SidecarPublic(name=filename, sha256=sha, size=stored.size if stored else 0))
        return BasePublic(
            **vars(rec),
            name=name,
            commit=commit_id(rec.digest, files.items()) if name is not None else None,
            files=sidecars,
        )

    # verification
    def verification(self, rec: BundleRecord) -> Verification:
        """``verified`` (its weights matched its fingerprint), ``failed`` (they did not: never served),
        or ``unverified`` (not checked yet: ``ensure_verified`` checks it once its base is here)."""
        if rec.verification_failed_at is not None:
            return "failed"
        with self._lock:
            if rec.digest in self._failed:
                return "failed"
        return "verified" if rec.verified_at is not None else "unverified"

    def _verify(self, digest: str, bundle: Bundle) -> None:
        """Check ``bundle`` under the Reconstructor; a failure is remembered for ``digest``."""
        try:
            with self.open_base(bundle) as base:
                self.reconstructor.verify(bundle, base)
        except mcnc_core.BaseMismatchError as exc:  # the reader cannot see the base: checked here
            raise self._failure(
                digest,
                InvalidBundleError(
                    f"the delta bundle does not fit its registered base ({exc}): it was trained on other tensors; "
                    "export it again against this base"
                ),
            ) from exc
        except mcnc_core.FingerprintMismatchError as exc:
            raise self._failure(
                digest,
                FingerprintMismatchError(
                    f"the bundle's reconstruction does not match its own fingerprint ({exc}): the file is corrupt "
                    "or was written by a broken tool; export it again"
                ),
            ) from exc

    def _failure(self, digest: str, error: ServiceError) -> ServiceError:
        """Remember ``error`` for ``digest`` here and in its row (a no-op for an upload not stored)."""
        with self._lock:
            self._failed[digest] = error
            while len(self._failed) > _FAILED:
                self._failed.popitem(last=False)
        try:
            self.store.meta.mark_failed(digest, time.time(), error.code, error.message)
        except ServiceError:  # the database is down: this process still remembers it
            log.warning("could not record the failed verification of sha256:%s", digest, exc_info=True)
        return error

    def _raise_if_failed(self, digest: str, rec: BundleRecord | None = None) -> None:
        with self._lock:
            known = self._failed.get(digest)
        if known is None and rec is not None and rec.verification_failed_at is not None:
            known = _stored_failure(rec)
        if known is not None:
            raise type(known)(f"{known.message} (checked before: sha256:{digest} is never served)")

    def ensure_verified(self, rec: BundleRecord) -> Verification:
        """Make sure nothing failing its fingerprint is served: a failed bundle raises again (no new
        decode), an unchecked one whose base is here is checked once (concurrent callers wait for that
        one check); returns ``verified``, or ``unverified`` for a delta whose base is not here.

        Raises:
            FingerprintMismatchError, InvalidBundleError: (422) it failed, now or before.
            InsufficientMemoryError: a tensor over the memory budget.
        """
        self._raise_if_failed(rec.digest, rec)
        if rec.verified_at is not None:
            return "verified"
        if not self.base_here(rec):
            return "unverified"
        with self._lock:
            lock = self._verify_locks.setdefault(rec.digest, threading.Lock())
        try:
            with lock:
                fresh = self.store.meta.get_bundle(rec.digest)
                self._raise_if_failed(rec.digest, fresh)  # another replica may have checked it meanwhile
                if fresh is None or fresh.verified_at is not None:
                    return "verified"
                self._verify(rec.digest, self.bundle(rec.digest))
                self.store.meta.mark_verified(rec.digest, time.time())
                return "verified"
        finally:  # also when it failed: a refused bundle must not leave its lock behind
            with self._lock:
                self._verify_locks.pop(rec.digest, None)

    def verify_waiting(self, base_digest: str) -> int:
        """Check the deltas stored before their base ``base_digest`` arrived (called after a base is
        registered, in a worker thread; each decode under the Reconstructor's budget and slots), up
        to ``MCNC_VERIFY_MAX_PARAMS`` each (larger ones are checked on first use). Each outcome is
        recorded; returns how many were checked. Never raises for a bundle's failure."""
        checked = 0
        for rec in self.store.meta.awaiting_verification(base_digest):
            if rec.num_params > self.settings.verify_max_params:
                continue
            try:
                self.ensure_verified(rec)
            except (FingerprintMismatchError, InvalidBundleError) as exc:
                log.info("sha256:%s failed its verification once its base arrived: %s", rec.digest, exc.message)
            except ServiceError as exc:  # busy, memory: it is checked on first use instead
                log.info("sha256:%s not checked after its base arrived (%s): on first use", rec.digest, exc.code)
                continue
            checked += 1
        return checked

    # delete
    def delete(self, digest: str, *, force: bool) -> None:
        """Delete a bundle (``BundleNotFoundError``; ``ConflictError`` while names point at it unless
        ``force``); streams that already hold the parsed bundle finish."""
        self.store.delete_bundle(digest, force=force)
        with self._lock:
            self._parsed.pop(digest, None)
        for forget in self._on_delete:
            forget(digest)
