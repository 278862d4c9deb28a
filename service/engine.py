"""The weights stream: layouts, memory and Redis tiers, single flight; no FastAPI, no store.

A weights response is ``prefix`` (8-byte length + JSON header, from the manifest alone) followed by
each tensor's bytes in manifest order. For bytes ``[start, end)`` the engine serves, in order of
preference: tier 1 (every touched tensor in memory), tier 2 (the whole stream in Redis), or
tensors. Tensors come from tier 1, else from the model's in-flight job, else from a reconstruction
of just the missing tensors. A cold full request starts a job: ONE background reconstruction
whose tensors every concurrent request streams (single flight); it fills tier 1 and tier 2.

Every decode goes through the ``Reconstructor`` (slots, memory, admission). The route hands the
engine the parsed bundle and keeps it for the whole response: nothing here reloads a bundle, so a
delete racing a stream cannot cut it after its status line (issue 19 N5). Redis is seen through a
few verbs: ``meta``/``read``/``writer`` for tier 2, ``claim``/``renew``/``release`` for the
cluster's one reconstruction of a key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from mcnc_core.bundle import Bundle
from mcnc_core.reconstruct import output_dtype
from mcnc_core.safetensors_io import TORCH_TO_DTYPE, build_header, tensor_bytes
from service.cache import MemoryCache
from service.config import Settings
from service.metrics import Metrics
from service.reconstructor import Reconstructor
from service.redis_cache import RedisCache, RedisEntry, RedisUnavailable, RedisWriter

__all__ = ["DTYPES", "BaseOpener", "Engine", "Layout"]

log = logging.getLogger("mcnc.service.engine")
DTYPES: dict[str, torch.dtype | None] = {
    "native": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_PIECE = 4 << 20  # bytes per yielded body piece
# A job keeps up to this many bytes (or the memory tier's budget, if larger) for its slowest reader
# before dropping it: readers a few tensors apart share one reconstruction even without tier 1.
_JOB_WINDOW_MIN = 64 << 20
_PEER_POLL_S = 0.05  # how often a server waiting on another's reconstruction looks for its tier-2 entry
#: ``open_base(bundle)``: a context manager over the base tensors a delta reads (None for full mode).
BaseOpener = Callable[[Bundle], AbstractContextManager[Mapping[str, Tensor] | None]]


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
        self.flight: str | None = None  # the cluster-wide flight lease's token, released when the job ends
        self.done = threading.Event()
        self.progressed = time.monotonic()  # when the job last produced a tensor (its lease follows it)

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
    """Everything between a request for weights bytes and the Reconstructor: runs in worker threads only."""

    def __init__(
        self,
        settings: Settings,
        reconstructor: Reconstructor,
        open_base: BaseOpener,
        metrics: Metrics,
        memory: MemoryCache,
        redis: RedisCache | None,
    ) -> None:
        self.settings, self.reconstructor, self.open_base = settings, reconstructor, open_base
        self.metrics, self.memory, self.redis = metrics, memory, redis
        self.profile = reconstructor.profile
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._layouts: dict[tuple[str, str, str], Layout] = {}
        self._weights_digests: dict[str, str] = {}  # model key -> sha256 of the full response

    # layouts
    def forget(self, digest: str) -> None:
        """Drop every layout and tier entry of a deleted bundle (streams already running finish)."""
        with self._lock:
            for k in [k for k in self._layouts if k[0] == digest]:
                del self._layouts[k]
            for key in [key for key in self._weights_digests if key.startswith(digest + ":")]:
                del self._weights_digests[key]
        self.memory.drop_digest(digest)
        if self.redis is not None:
            self.redis.drop_digest(digest)

    def layout(self, digest: str, bundle: Bundle, dtype: str) -> Layout:
        """The response layout for ``(digest, dtype)`` on this server's numerics profile (memoised).

        Raises:
            InsufficientMemoryError: a tensor of the bundle is over the reconstruction memory budget.
        """
        memo_key = (digest, dtype, self.profile)
        with self._lock:
            cached = self._layouts.get(memo_key)
        if cached is not None:
            return cached
        # once per layout (memoised): a stored tensor over the budget is a 507 before any status line
        self.reconstructor.check_fits(bundle, (DTYPES[dtype],))
        lay = self._layout(digest, bundle, dtype)
        with self._lock:
            self._layouts[memo_key] = lay
            while len(self._layouts) > 256:
                self._layouts.pop(next(iter(self._layouts)))
        return lay

    def _layout(self, digest: str, bundle: Bundle, dtype: str) -> Layout:
        tdtype = DTYPES[dtype]
        tensors = [(e.name, TORCH_TO_DTYPE[output_dtype(e, tdtype)], e.shape) for e in bundle.manifest]
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

    # what the tiers hold
    def loaded(self) -> list[tuple[str, str, int, float]]:
        """``(model key, tier, bytes, last use)`` of what tier 1 and tier 2 hold."""
        rows = [(key, "memory", s.nbytes, s.last_used) for key, s in self.memory.loaded().items()]
        if self.redis is not None:
            rows += [(key, "redis", n, last) for key, n, last in self.redis.loaded()]
        return rows

    def redis_state(self) -> str:
        """``off`` (no Redis configured), ``ok`` or ``down``."""
        return "off" if self.redis is None else ("ok" if self.redis.ping() else "down")

    # admission
    def is_warm(self, lay: Layout, start: int, end: int) -> bool:
        return self.memory.has_all(lay.key, lay.touched(start, end))

    def admit(self) -> None:
        """Refuse (429) when too many reconstructions are already running or queued."""
        self.reconstructor.admit()

    # the stream
    def stream(self, lay: Layout, bundle: Bundle, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Yield the response bytes ``[start, end)`` of ``bundle`` (a sync generator: iterate it in a thread)."""
        flight: str | None = None  # this server's lease on the cluster's one reconstruction of lay
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
        for name, t in self._tensors(lay, bundle, touched, full=whole, flight=flight):
            b, e = lay.spans[name]
            buf = tensor_bytes(t)
            lo, hi = max(pos, b) - b, min(end, e) - b
            for off in range(lo, hi, _PIECE):
                yield buf[off : min(hi, off + _PIECE)]
            pos = b + hi

    def _peer_or_flight(self, lay: Layout) -> tuple[RedisEntry | None, str | None]:
        """Across servers sharing Redis, one reconstruction per model key: claim its lease, or wait
        for the server holding it to publish the tier-2 entry.

        Returns:
            ``(entry, None)`` once another server's entry is complete; ``(None, token)`` when this server
            reconstructs (the job releases the lease); ``(None, None)`` to reconstruct without it (a local
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
                token = redis.claim(lay.key)
                if token is not None:
                    if not redis.has(lay.key, quiet=False):
                        return None, token
                    redis.release(lay.key, token)  # the previous holder finished in between
                    return redis.meta(lay.key, lay.total), None
                time.sleep(_PEER_POLL_S)
                if redis.has(lay.key, quiet=False):
                    self.metrics.peer_waits.inc()
                    return redis.meta(lay.key, lay.total), None
                if time.monotonic() > deadline:
                    log.warning("no tier-2 entry for %s from its lease holder within %ss", lay.key, deadline)
                    return None, None
        except RedisUnavailable:
            return None, None

    def _reconstruct(
        self, bundle: Bundle, names: list[str] | None, dtype: str, *, kind: str
    ) -> Iterator[tuple[str, Tensor]]:
        with self.open_base(bundle) as base:
            yield from self.reconstructor.reconstruct(bundle, base, names=names, dtype=DTYPES[dtype], kind=kind)

    def _tensors(
        self, lay: Layout, bundle: Bundle, names: list[str], *, full: bool, flight: str | None = None
    ) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` for ``names`` in order: memory, else the job, else rebuild the rest.

        ``flight`` (the cluster's lease for ``lay``) goes to the job this call starts; if none starts,
        it is released at once.
        """
        job = None
        with self._lock:
            job = self._jobs.get(lay.key)
            if job is None and full and not self.memory.has_all(lay.key, names):
                job = self._start_job(lay, bundle, flight)
                flight = None
        if flight is not None and self.redis is not None:
            self.redis.release(lay.key, flight)
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
                        own = self._reconstruct(bundle, names[i:], lay.dtype, kind="partial")
                    got, t = next(own)
                    assert got == name, (got, name)
                yield name, t
        finally:
            if job is not None and sid is not None:
                job.unsubscribe(sid)
            if own is not None:
                own.close()  # type: ignore[attr-defined]

    def _start_job(self, lay: Layout, bundle: Bundle, flight: str | None) -> _Job:
        # caller holds self._lock
        job = _Job(lay, window=max(self.memory.budget, _JOB_WINDOW_MIN))
        job.flight = flight
        self._jobs[lay.key] = job
        name = f"mcnc-job-{lay.digest[:8]}"
        threading.Thread(target=self._run_job, args=(job, bundle), name=name, daemon=True).start()
        return job

    def _renew_lease(self, job: _Job) -> None:
        """Keep the job's lease while it makes progress: renewed every third of a lease as long as a
        tensor came within ``load_timeout``. A killed server renews nothing: its lease lapses within
        ``FLIGHT_LEASE_S`` and a peer takes over (N4)."""
        redis, token = self.redis, job.flight
        assert redis is not None and token is not None
        period = RedisCache.FLIGHT_LEASE_S / 3
        while not job.done.wait(period):
            if time.monotonic() - job.progressed > self.settings.load_timeout:
                log.warning(
                    "reconstruction of %s made no progress for %ss: its lease lapses",
                    job.layout.key,
                    self.settings.load_timeout,
                )
                return
            if not redis.renew(job.layout.key, token):
                return

    def _run_job(self, job: _Job, bundle: Bundle) -> None:
        lay = job.layout
        writer: RedisWriter | None = None
        digest = hashlib.sha256(lay.prefix)
        renewer = None
        if job.flight is not None:
            renewer = threading.Thread(target=self._renew_lease, args=(job,), name="mcnc-lease", daemon=True)
            renewer.start()
        try:
            if self.redis is not None and not self.redis.has(lay.key):
                writer = self.redis.writer(lay.key, lay.total)
                if writer is not None:
                    writer.feed(lay.prefix)
            for name, t in self._reconstruct(bundle, None, lay.dtype, kind="full"):
                job.progressed = time.monotonic()
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
            job.done.set()
            if job.flight is not None and self.redis is not None:
                self.redis.release(lay.key, job.flight)  # after the commit: waiters find the entry
            job.finish()
