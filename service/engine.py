"""Reconstruction engine: layouts, single-flight jobs, tier lookups and the byte stream; no FastAPI.

A weights response is ``prefix`` (8-byte length + JSON header, from the manifest alone) followed by
each tensor's bytes in manifest order. For bytes ``[start, end)`` the engine serves, in order of
preference: tier 1 (every touched tensor in memory), tier 2 (the whole stream in Redis), or
tensors. Tensors come from tier 1, else from the model's in-flight job, else from a reconstruction
of just the missing tensors. A cold full request starts a job: ONE background reconstruction
whose tensors every concurrent request streams (single flight); it fills tier 1 and tier 2.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from redis.lock import Lock
from safetensors import safe_open
from torch import Tensor

import mcnc_core
from mcnc_core.backend import backend_for
from mcnc_core.bundle import Bundle
from mcnc_core.generator import cpu_gemm_kernel
from mcnc_core.hostmem import OutputRecycler
from mcnc_core.reconstruct import iter_reconstruct, output_dtype
from mcnc_core.safetensors_io import TORCH_TO_DTYPE, build_header, tensor_bytes
from service.cache import MemoryCache
from service.config import Settings
from service.errors import (
    BaseNotFoundError,
    BusyError,
    FingerprintMismatchError,
    InsufficientMemoryError,
    InvalidBundleError,
)
from service.memory import ByteBudget
from service.metrics import Metrics
from service.redis_cache import RedisCache, RedisEntry, RedisUnavailable, RedisWriter
from service.storage import Store

__all__ = ["DTYPES", "Engine", "Layout", "resolve_device"]

log = logging.getLogger("mcnc.service.engine")
DTYPES: dict[str, torch.dtype | None] = {
    "native": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_PIECE = 4 << 20  # bytes per yielded body piece
# Bytes a tensor needs per parameter while it is built and sent: its float32 output, a cast's (or a
# low-rank tensor's float32) scratch, and the previous tensor still being sent.
WORKING_SET_PER_PARAM = 12
# A job keeps up to this many bytes (or the memory tier's budget, if larger) for its slowest reader
# before dropping it: readers a few tensors apart share one reconstruction even without tier 1.
_JOB_WINDOW_MIN = 64 << 20
_PEER_POLL_S = 0.05  # how often a server waiting on another's reconstruction looks for its tier-2 entry


def resolve_device(setting: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU raises RuntimeError."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("MCNC_DEVICE=cuda but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def numerics_profile(device: torch.device) -> str:
    """What decides the last bits of a reconstruction: device kind/name, on CPU the vector ISA torch
    dispatches (its kernels, MKL's among them, differ by ISA) and the output GEMM's kernel
    (``native`` where mcnc_core's own is built and the CPU has AVX-512F), and the torch and mcnc
    versions."""
    mcnc = f"mcnc-{mcnc_core.__version__}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda/{name}/cuda-{torch.version.cuda}/torch-{torch.__version__}/{mcnc}"
    isa = torch.backends.cpu.get_cpu_capability()
    return f"cpu/torch-{torch.__version__}/{isa}/{cpu_gemm_kernel()}/{mcnc}"


@dataclass(frozen=True)
class Layout:
    """The exact bytes of one weights response: header prefix, tensor byte ranges, ETag."""

    digest: str
    dtype: str
    key: str  # cache key: digest:dtype:profile-hash
    etag: str
    prefix: bytes
    names: tuple[str, ...]
    spans: Mapping[str, tuple[int, int]]  # absolute [begin, end) in the response
    total: int

    @property
    def data_bytes(self) -> int:
        return self.total - len(self.prefix)

    def touched(self, start: int, end: int) -> list[str]:
        return [n for n in self.names if self.spans[n][0] < end and self.spans[n][1] > start]


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


class _Job:
    """One full reconstruction shared by subscribers; retains tensors only while someone needs them.

    The job never waits on a reader (issue 11 D3): a model that fits ``window`` bytes is kept whole
    until the job ends; otherwise the job keeps what its slowest subscriber still needs, and when
    that passes ``window`` bytes it drops the slowest subscriber, which rebuilds the rest itself.
    A slow reader so costs its own stream, never the others'.
    """

    def __init__(self, layout: Layout, window: int) -> None:
        self.layout, self.window = layout, window
        self.keep_all = layout.data_bytes <= window
        self.index = {n: i for i, n in enumerate(layout.names)}
        self.cond = threading.Condition()
        self.tensors: dict[str, Tensor] = {}
        self.held = 0  # bytes in ``tensors``
        self.produced = 0
        self.finished = False
        self.subs: dict[int, list[int]] = {}  # subscriber -> indices it still needs, ascending
        self._next_sub = 0
        self.flight: Lock | None = None  # the cluster-wide flight lock, released when the job ends

    def subscribe(self, names: list[str]) -> int:
        with self.cond:
            sid = self._next_sub = self._next_sub + 1
            self.subs[sid] = [self.index[n] for n in names]
            return sid

    def unsubscribe(self, sid: int) -> None:
        with self.cond:
            self.subs.pop(sid, None)
            self._release()

    def advance(self, sid: int, name: str) -> None:
        """The subscriber has ``name`` (from the job or elsewhere, e.g. tier 1): it needs nothing up to it."""
        i = self.index[name]
        with self.cond:
            need = self.subs.get(sid)
            if need is not None and need and need[0] <= i:
                self.subs[sid] = [j for j in need if j > i]
                self._release()

    def take(self, sid: int, name: str) -> Tensor | None:
        """The tensor once produced, or None (job failed or dropped it): rebuild it yourself."""
        i = self.index[name]
        with self.cond:
            while self.produced <= i and not self.finished and sid in self.subs:
                self.cond.wait(1.0)
            t = self.tensors.get(name)
        self.advance(sid, name)
        return t

    def publish(self, name: str, t: Tensor) -> None:
        with self.cond:
            self.tensors[name] = t
            self.held += t.numel() * t.element_size()
            self.produced = self.index[name] + 1
            self.cond.notify_all()
            self._release()

    def _release(self) -> None:
        # caller holds self.cond: drop what no subscriber needs; past the window, the slowest goes
        if self.keep_all:
            return
        while True:
            low = min((need[0] for need in self.subs.values() if need), default=len(self.index))
            for n in [n for n in self.tensors if self.index[n] < low]:
                t = self.tensors.pop(n)
                self.held -= t.numel() * t.element_size()
            if self.held <= self.window or not self.subs:
                return
            slowest = min((s for s, need in self.subs.items() if need), key=lambda s: self.subs[s][0], default=None)
            if slowest is None or self.subs[slowest][0] >= self.produced - 1:
                return  # everyone waits on the newest tensor: nothing to drop but it
            del self.subs[slowest]  # it rebuilds what it still needs itself
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()


class Engine:
    """Everything between a request for bytes and ``mcnc_core``: runs in worker threads only."""

    def __init__(
        self, settings: Settings, store: Store, metrics: Metrics, memory: MemoryCache, redis: RedisCache | None
    ) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics
        self.memory, self.redis = memory, redis
        self.device = resolve_device(settings.device)
        self.profile = numerics_profile(self.device)
        self._sem = threading.BoundedSemaphore(settings.max_concurrent_reconstructions)
        self.memory_budget = ByteBudget(settings.resolved_reconstruction_memory())
        self._verify_locks: dict[str, threading.Lock] = {}
        # CPU: one recycler for all reconstructions: a request reuses the memory of tensors that earlier
        # ones dropped (three per stream: the one sent, the one being built, a cast's scratch).
        # CUDA: tensors reach host memory through pinned buffers on a copy stream, overlapped with
        # the next decode; tiers 1 and 2 then hold host bytes, so a stream never waits on the GPU.
        recycler = None
        if self.device.type == "cpu" and settings.recycle_bytes > 0:
            keep = 3 * settings.max_concurrent_reconstructions
            recycler = OutputRecycler(keep=keep, max_bytes=settings.recycle_bytes)
        self.backend = backend_for(self.device, recycler=recycler)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._bundles: OrderedDict[str, Bundle] = OrderedDict()
        self._layouts: dict[tuple[str, str, str], Layout] = {}
        self._weights_digests: dict[str, str] = {}  # model key -> sha256 of the full response
        self._pending = 0
        self.reconstruction_count = 0  # runs producing served tensors, full and partial (for tests)

    # bundles and layouts
    def bundle(self, digest: str) -> Bundle:
        """The parsed bundle (a small LRU avoids re-validating hot bundles)."""
        with self._lock:
            if digest in self._bundles:
                self._bundles.move_to_end(digest)
                return self._bundles[digest]
        b = mcnc_core.load_bundle(self.store.bundle_bytes(digest))
        with self._lock:
            self._bundles[digest] = b
            while len(self._bundles) > 16:
                self._bundles.popitem(last=False)
        return b

    def forget(self, digest: str) -> None:
        with self._lock:
            self._bundles.pop(digest, None)
            for k in [k for k in self._layouts if k[0] == digest]:
                del self._layouts[k]
            for key in [key for key in self._weights_digests if key.startswith(digest + ":")]:
                del self._weights_digests[key]
        self.memory.drop_digest(digest)
        if self.redis is not None:
            self.redis.drop_digest(digest)

    def layout(self, digest: str, dtype: str) -> Layout:
        """The response layout for ``(digest, dtype)`` on this server's numerics profile (memoised).

        Raises:
            InsufficientMemoryError: a tensor of the bundle is over the reconstruction memory budget.
        """
        memo_key = (digest, dtype, self.profile)
        with self._lock:
            cached = self._layouts.get(memo_key)
        if cached is not None:
            return cached
        lay = self._layout(digest, dtype)
        with self._lock:
            self._layouts[memo_key] = lay
            while len(self._layouts) > 256:
                self._layouts.pop(next(iter(self._layouts)))
        return lay

    def _layout(self, digest: str, dtype: str) -> Layout:
        b = self.bundle(digest)
        self.check_fits(b)  # once per layout (memoised): a stored tensor over the budget is a 507
        tdtype = DTYPES[dtype]
        tensors = [(e.name, TORCH_TO_DTYPE[output_dtype(e, tdtype)], e.shape) for e in b.manifest]
        meta = {"format": "pt", "bundle_sha256": digest, "mcnc_numerics": self.profile}
        prefix, entries = build_header(tensors, meta)
        spans = {h.name: (len(prefix) + h.begin, len(prefix) + h.end) for h in entries}
        total = len(prefix) + (entries[-1].end if entries else 0)
        ident = hashlib.sha256(f"mcnc-weights/1\0{digest}\0{dtype}\0{self.profile}".encode()).hexdigest()
        key = f"{digest}:{dtype}:{ident[:16]}"
        return Layout(digest, dtype, key, ident, prefix, tuple(spans), spans, total)

    def weights_digest(self, lay: Layout) -> str | None:
        """sha256 of the full response once one full reconstruction here (or in Redis) recorded it."""
        with self._lock:
            known = self._weights_digests.get(lay.key)
        if known is None and self.redis is not None:
            known = self.redis.weights_digest(lay.key)
            if known is not None:
                with self._lock:
                    self._weights_digests[lay.key] = known
        return known

    # limits and verification
    @property
    def max_tensor_params(self) -> int:
        """The largest tensor (in parameters) whose working set fits the reconstruction memory budget."""
        return self.memory_budget.total // WORKING_SET_PER_PARAM

    def check_fits(self, bundle: Bundle) -> None:
        """Raises InsufficientMemoryError (507) when a tensor of ``bundle`` cannot fit the memory budget
        (a bundle stored under a larger budget): answered before any status line, never an OOM."""
        largest = max((e.numel for e in bundle.manifest), default=0)
        if largest > self.max_tensor_params:
            raise InsufficientMemoryError(
                f"a tensor of {largest:,} parameters needs {largest * WORKING_SET_PER_PARAM:,} bytes to reconstruct, "
                f"over this server's budget of {self.memory_budget.total:,} (MCNC_RECONSTRUCTION_MEMORY_BYTES); "
                "raise it, or load the bundle where more memory is available (client.load)"
            )

    def verify(self, bundle: Bundle) -> None:
        """Reconstruct every tensor of ``bundle`` and check it against the bundle's fingerprint.

        Raises:
            FingerprintMismatchError: (422) naming the tensor and the statistic that differ.
            BaseNotFoundError: a delta whose base is not registered.
        """
        self.check_fits(bundle)
        try:
            for _name, _t in self._reconstruct(bundle, None, None, kind="verify", verify=True):
                pass
        except mcnc_core.BaseMismatchError as exc:  # the reader cannot see the base: checked here
            raise InvalidBundleError(
                f"the delta bundle does not fit its registered base ({exc}): it was trained on other tensors; "
                "export it again against this base"
            ) from exc
        except mcnc_core.FingerprintMismatchError as exc:
            raise FingerprintMismatchError(
                f"the bundle's reconstruction does not match its own fingerprint ({exc}): the file is corrupt "
                "or was written by a broken tool; export it again"
            ) from exc

    def ensure_verified(self, digest: str) -> None:
        """Verify a stored bundle once (its row records when); concurrent callers wait for one check.

        Called before any byte of a bundle's weights is served: bundles stored before verification
        existed, over ``verify_max_params``, or deltas uploaded before their base are checked here.
        """
        rec = self.store.meta.get_bundle(digest)
        if rec is None or rec.verified_at is not None:
            return
        with self._lock:
            lock = self._verify_locks.setdefault(digest, threading.Lock())
        try:
            with lock:
                rec = self.store.meta.get_bundle(digest)
                if rec is None or rec.verified_at is not None:
                    return
                self.verify(self.bundle(digest))
                self.store.meta.mark_verified(digest, time.time())
        finally:  # also when it failed: a refused bundle must not leave its lock behind
            with self._lock:
                self._verify_locks.pop(digest, None)

    # admission
    def is_warm(self, lay: Layout, start: int, end: int) -> bool:
        return self.memory.has_all(lay.key, lay.touched(start, end))

    def admit(self) -> None:
        """Refuse (429) when too many reconstructions are already running or queued."""
        limit = self.settings.max_concurrent_reconstructions + self.settings.max_queued_reconstructions
        with self._lock:
            if self._pending >= limit:
                raise BusyError(
                    f"{self._pending} reconstructions running or queued (limit {limit}); retry later",
                    headers={"Retry-After": "1"},
                )

    # the stream
    def stream(self, lay: Layout, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Yield the response bytes ``[start, end)`` (a sync generator: iterate it in a thread)."""
        flight: Lock | None = None  # this server's right to run the cluster's one reconstruction of lay
        if start < len(lay.prefix):
            yield lay.prefix[start : min(end, len(lay.prefix))]
        pos = max(start, len(lay.prefix))
        if pos >= end:
            return
        touched = lay.touched(pos, end)
        whole = start == 0 and end == lay.total
        if self.memory.has_all(lay.key, touched):
            self.metrics.hits.labels("memory").inc()
        else:
            self.metrics.misses.labels("memory").inc()
            if self.redis is not None:
                meta = self.redis.meta(lay.key, lay.total)
                if meta is None and whole:
                    meta, flight = self._peer_or_flight(lay)
                if meta is not None:
                    try:
                        for piece in self.redis.read(lay.key, meta, pos, end):
                            yield piece
                            pos += len(piece)
                        return
                    except RedisUnavailable:
                        whole = False  # resume from ``pos``, rebuilding only what is left
                    touched = lay.touched(pos, end)
        for name, t in self._tensors(lay, touched, full=whole, flight=flight):
            b, e = lay.spans[name]
            buf = tensor_bytes(t)
            lo, hi = max(pos, b) - b, min(end, e) - b
            for off in range(lo, hi, _PIECE):
                yield buf[off : min(hi, off + _PIECE)]
            pos = b + hi

    def _peer_or_flight(self, lay: Layout) -> tuple[RedisEntry | None, Lock | None]:
        """Across servers sharing Redis, one reconstruction per model key: take the flight lock, or wait
        for the server holding it to publish the tier-2 entry.

        Returns:
            ``(entry, None)`` once another server's entry is complete; ``(None, lock)`` when this server
            reconstructs (the job releases the lock); ``(None, None)`` to reconstruct without it (a local
            job exists, the stream cannot fit tier 2, Redis failed, or ``load_timeout`` passed).
        """
        redis = self.redis
        assert redis is not None
        if lay.total > redis.budget:  # no entry will ever appear for others to wait on
            return None, None
        deadline = time.monotonic() + self.settings.load_timeout
        try:
            while True:
                with self._lock:
                    if lay.key in self._jobs:  # a job here: join it
                        return None, None
                lock = redis.try_flight_lock(lay.key)
                if lock is not None:
                    if not redis.has(lay.key, quiet=False):
                        return None, lock
                    redis.release_flight_lock(lock)  # the previous holder finished in between
                    return redis.meta(lay.key, lay.total), None
                time.sleep(_PEER_POLL_S)
                if redis.has(lay.key, quiet=False):
                    self.metrics.peer_waits.inc()
                    return redis.meta(lay.key, lay.total), None
                if time.monotonic() > deadline:
                    log.warning("no tier-2 entry for %s from its flight-lock holder within %ss", lay.key, deadline)
                    return None, None
        except RedisUnavailable:
            return None, None

    def _tensors(
        self, lay: Layout, names: list[str], *, full: bool, flight: Lock | None = None
    ) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for ``names`` in order: memory, else the job, else rebuild the rest.

        ``flight`` (the cluster's flight lock for ``lay``) goes to the job this call starts; if none
        starts, it is released at once.
        """
        job = None
        with self._lock:
            job = self._jobs.get(lay.key)
            if job is None and full and not self.memory.has_all(lay.key, names):
                job = self._start_job(lay, flight)
                flight = None
        if flight is not None and self.redis is not None:
            self.redis.release_flight_lock(flight)
        sid = job.subscribe(names) if job is not None else None
        own: Iterator[tuple[str, Tensor]] | None = None
        try:
            for i, name in enumerate(names):
                t = None if own is not None else self.memory.get(lay.key, name)
                if job is not None and sid is not None:
                    if t is None:
                        t = job.take(sid, name)
                    else:  # served from tier 1: the job must not keep (or wait for) it on our account
                        job.advance(sid, name)
                if t is None:
                    if own is None:  # from here on, rebuild every remaining tensor ourselves
                        if job is not None and sid is not None:
                            job.unsubscribe(sid)
                            job = None
                        own = self._reconstruct(self.bundle(lay.digest), names[i:], lay.dtype, kind="partial")
                    got, t = next(own)
                    assert got == name, (got, name)
                yield name, t
        finally:
            if job is not None and sid is not None:
                job.unsubscribe(sid)
            if own is not None:
                own.close()  # type: ignore[attr-defined]

    def _start_job(self, lay: Layout, flight: Lock | None) -> _Job:
        # caller holds self._lock
        job = _Job(lay, window=max(self.memory.budget, _JOB_WINDOW_MIN))
        job.flight = flight
        self._jobs[lay.key] = job
        threading.Thread(target=self._run_job, args=(job,), name=f"mcnc-job-{lay.digest[:8]}", daemon=True).start()
        return job

    def _run_job(self, job: _Job) -> None:
        lay = job.layout
        writer: RedisWriter | None = None
        digest = hashlib.sha256(lay.prefix)
        try:
            if self.redis is not None and not self.redis.has(lay.key):
                writer = self.redis.writer(lay.key, lay.total)
                if writer is not None:
                    writer.feed(lay.prefix)
            renewed = time.monotonic()
            for name, t in self._reconstruct(self.bundle(lay.digest), None, lay.dtype, kind="full"):
                if job.flight is not None and time.monotonic() - renewed > RedisCache.FLIGHT_LEASE_S / 3:
                    assert self.redis is not None
                    self.redis.extend_flight_lock(job.flight)
                    renewed = time.monotonic()
                self.memory.put(lay.key, name, t)
                job.publish(name, t)
                data = tensor_bytes(t)
                digest.update(data)
                if writer is not None:
                    writer.feed(data)
            with self._lock:
                self._weights_digests[lay.key] = digest.hexdigest()
            if writer is not None:
                writer.commit(digest.hexdigest())
        except Exception:
            log.exception("reconstruction job for %s failed", lay.key)
        finally:
            with self._lock:
                self._jobs.pop(lay.key, None)
            if job.flight is not None and self.redis is not None:
                self.redis.release_flight_lock(job.flight)  # after the commit: waiters find the entry
            job.finish()

    def _reconstruct(
        self, bundle: Bundle, names: list[str] | None, dtype: str | None, *, kind: str, verify: bool = False
    ) -> Iterator[tuple[str, Tensor]]:
        """``iter_reconstruct`` of ``names`` (None: all), holding a slot and memory only while computing.

        Each tensor takes a reconstruction slot and its working set from the memory budget, and gives
        both back before it is yielded: a consumer slow to send (or a job's slow readers) never holds
        compute or budget others wait for.

        Raises:
            TimeoutError: no slot or memory within ``load_timeout``.
        """
        with self._lock:
            self._pending += 1
        base: _LazyBase | None = None
        try:
            if bundle.base is not None:
                rec = self.store.meta.get_base(bundle.base.sha256)
                if rec is None:
                    raise BaseNotFoundError(f"the base sha256:{bundle.base.sha256} of the bundle is not registered")
                base = _LazyBase(self.store.base_file(rec))
            self.metrics.reconstructions.labels(kind).inc()
            if kind != "verify":
                with self._lock:
                    self.reconstruction_count += 1
            t0 = time.perf_counter()
            wanted = None if names is None else set(names)
            sizes = [e.numel * WORKING_SET_PER_PARAM for e in bundle.manifest if wanted is None or e.name in wanted]
            decoded = iter_reconstruct(
                bundle,
                base,
                self.device,
                None if dtype is None else DTYPES[dtype],
                verify=verify,
                verify_base=False,
                names=names,
                backend=self.backend,
            )
            tensors = self.backend.to_host(decoded)
            timeout = self.settings.load_timeout
            try:
                for need in sizes:
                    if not self.memory_budget.acquire(need, timeout):
                        raise TimeoutError(f"no reconstruction memory ({need:,} bytes) within {timeout}s")
                    try:
                        if not self._sem.acquire(timeout=timeout):
                            raise TimeoutError(f"no reconstruction slot within {timeout}s")
                        try:
                            item = next(tensors)
                        finally:
                            self._sem.release()
                    finally:
                        self.memory_budget.release(need)
                    yield item
            finally:
                tensors.close()  # type: ignore[attr-defined]
                decoded.close()  # type: ignore[attr-defined]
            self.metrics.reconstruction_seconds.labels(kind).observe(time.perf_counter() - t0)
        finally:
            if base is not None:
                base.close()
            with self._lock:
                self._pending -= 1
