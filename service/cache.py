"""Tier 1: in-process byte-budget LRU of reconstructed tensors. Tier 2: Redis chunks of the stream.

Keys never go stale: they are the model key ``<bundle digest>:<dtype>:<profile>``, never a name.
Tier 2 stores the exact bytes a full weights response carries, in chunks of at most 8 MiB
(``<prefix>w:<key>:<i>``) plus a metadata hash written last, all with a TTL; a sorted set orders
entries by last use for the byte budget. Any Redis failure is a logged warning, a metric and a
miss; after one, Redis is skipped for ``RETRY_AFTER_S`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from torch import Tensor

from service.metrics import Metrics

__all__ = ["MemoryCache", "RedisCache", "RedisUnavailable", "RedisWriter"]

log = logging.getLogger("mcnc.service.cache")
T = TypeVar("T")


@dataclass
class _ModelStat:
    nbytes: int = 0
    tensors: int = 0
    last_used: float = 0.0


class MemoryCache:
    """Thread-safe LRU of ``(model_key, tensor name) -> tensor`` bounded by ``budget`` bytes."""

    def __init__(self, budget: int, metrics: Metrics) -> None:
        self.budget, self.metrics = budget, metrics
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], Tensor] = OrderedDict()
        self._models: dict[str, _ModelStat] = {}
        self.nbytes = 0

    @staticmethod
    def _size(t: Tensor) -> int:
        return t.numel() * t.element_size()

    def get(self, key: str, name: str) -> Tensor | None:
        with self._lock:
            t = self._items.get((key, name))
            if t is not None:
                self._items.move_to_end((key, name))
                self._models[key].last_used = time.time()
            return t

    def has_all(self, key: str, names: list[str]) -> bool:
        with self._lock:
            return all((key, n) in self._items for n in names)

    def put(self, key: str, name: str, t: Tensor) -> bool:
        """Insert, evicting least recently used tensors; False if ``t`` alone exceeds the budget."""
        size = self._size(t)
        if size > self.budget:
            return False
        with self._lock:
            if (key, name) in self._items:
                self._items.move_to_end((key, name))
                return True
            while self.nbytes + size > self.budget and self._items:
                (k, _n), old = self._items.popitem(last=False)
                self._account(k, -self._size(old), -1)
                self.metrics.evictions.labels("memory").inc()
            self._items[(key, name)] = t
            self._account(key, size, 1)
            return True

    def _account(self, key: str, nbytes: int, count: int) -> None:
        stat = self._models.setdefault(key, _ModelStat())
        stat.nbytes += nbytes
        stat.tensors += count
        stat.last_used = time.time()
        self.nbytes += nbytes
        if stat.tensors == 0:
            del self._models[key]
        self.metrics.cache_bytes.labels("memory").set(self.nbytes)

    def drop_digest(self, digest: str) -> None:
        with self._lock:
            for k, n in [kn for kn in self._items if kn[0].startswith(digest + ":")]:
                self._account(k, -self._size(self._items.pop((k, n))), -1)

    def loaded(self) -> dict[str, _ModelStat]:
        with self._lock:
            return {k: _ModelStat(v.nbytes, v.tensors, v.last_used) for k, v in self._models.items()}


class RedisUnavailable(Exception):
    """A Redis operation failed (already logged and counted)."""


class RedisCache:
    """Tier 2 (sync client: called from worker threads, never on the event loop)."""

    RETRY_AFTER_S = 2.0

    def __init__(self, url: str, *, budget: int, ttl: int, chunk_bytes: int, prefix: str, metrics: Metrics) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)
        self.budget, self.ttl, self.chunk_bytes, self.prefix = budget, ttl, chunk_bytes, prefix
        self.metrics = metrics
        self._down_until = 0.0
        self._lru, self._sizes = prefix + "lru", prefix + "sizes"
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mcnc-redis")

    def _call(self, fn: Callable[[], T]) -> T:
        if time.monotonic() < self._down_until:
            raise RedisUnavailable("redis marked down")
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.RETRY_AFTER_S
            self.metrics.redis_errors.inc()
            log.warning("redis unavailable, serving without tier 2: %s", exc)
            raise RedisUnavailable(str(exc)) from exc

    def _k(self, key: str, part: str) -> str:
        return f"{self.prefix}w:{key}:{part}"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except RedisUnavailable:
            return False

    def meta(self, key: str, total: int) -> dict[str, int] | None:
        """The entry's metadata if complete and of the expected length; counts a hit or a miss.

        One round trip: reads the metadata and marks the entry used (``ZADD XX``) together.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._k(key, "meta"))
        pipe.zadd(self._lru, {key: time.time()}, xx=True)
        try:
            replies: Any = self._call(pipe.execute)
        except RedisUnavailable:
            return None
        meta = {k.decode(): int(v) for k, v in replies[0].items() if k != b"sha256"}
        if meta.get("total") != total or "chunk" not in meta:
            self.metrics.misses.labels("redis").inc()
            return None
        self.metrics.hits.labels("redis").inc()
        return meta

    def has(self, key: str) -> bool:
        """Whether a complete entry exists (no hit/miss accounting)."""
        try:
            return bool(self._call(lambda: self.client.exists(self._k(key, "meta"))))
        except RedisUnavailable:
            return False

    def weights_digest(self, key: str) -> str | None:
        """The sha256 of the whole stored response, recorded when the entry was written."""
        try:
            value: Any = self._call(lambda: self.client.hget(self._k(key, "meta"), "sha256"))
        except RedisUnavailable:
            return None
        return value.decode() if isinstance(value, bytes) else None

    def read(self, key: str, meta: dict[str, int], start: int, end: int) -> Iterator[bytes]:
        """Yield bytes ``[start, end)``; raises ``RedisUnavailable`` if a chunk is gone or Redis fails.

        The next chunk is fetched while the current one is being sent (one chunk of read-ahead).
        """
        chunk = meta["chunk"]
        first, last = start // chunk, (end - 1) // chunk

        def get(i: int) -> Any:
            return self._call(lambda: self.client.get(self._k(key, str(i))))

        pending: Future[Any] = self._pool.submit(get, first)
        pos = start
        for i in range(first, last + 1):
            data = pending.result()
            if i < last:
                pending = self._pool.submit(get, i + 1)
            if not isinstance(data, bytes) or len(data) != min(chunk, meta["total"] - i * chunk):
                raise RedisUnavailable(f"chunk {i} of {key} missing or truncated")
            lo, hi = pos - i * chunk, min(end - i * chunk, len(data))
            yield data if (lo, hi) == (0, len(data)) else data[lo:hi]
            pos += hi - lo

    def writer(self, key: str, total: int) -> RedisWriter | None:
        """A writer for a new entry, after evicting down to the budget; None if it cannot fit."""
        if total > self.budget:
            return None
        try:
            self._make_room(total)
        except RedisUnavailable:
            return None
        return RedisWriter(self, key, total)

    def _make_room(self, size: int) -> None:
        def used() -> int:
            values: Any = self.client.hvals(self._sizes)
            return sum(int(v) for v in values)

        while self._call(used) + size > self.budget:
            popped: Any = self._call(lambda: self.client.zpopmin(self._lru, 1))
            if not popped:
                break
            self.delete(popped[0][0].decode())
            self.metrics.evictions.labels("redis").inc()

    def delete(self, key: str) -> None:
        size: Any = self._call(lambda: self.client.hget(self._sizes, key))
        n = 0 if size is None else -(-int(size) // self.chunk_bytes)
        keys = [self._k(key, "meta")] + [self._k(key, str(i)) for i in range(n)]
        pipe = self.client.pipeline()
        pipe.delete(*keys)
        pipe.zrem(self._lru, key)
        pipe.hdel(self._sizes, key)
        self._call(pipe.execute)

    def drop_digest(self, digest: str) -> None:
        try:
            members: Any = self._call(lambda: self.client.zrange(self._lru, 0, -1))
            for m in members:
                if m.decode().startswith(digest + ":"):
                    self.delete(m.decode())
        except RedisUnavailable:
            pass

    def loaded(self) -> list[tuple[str, int, float]]:
        """``(model key, bytes, last use)`` of entries in the LRU set."""
        try:
            members: Any = self._call(lambda: self.client.zrange(self._lru, 0, -1, withscores=True))
            sizes: Any = self._call(lambda: self.client.hgetall(self._sizes))
        except RedisUnavailable:
            return []
        return [(m.decode(), int(sizes.get(m, 0)), float(s)) for m, s in members]


class RedisWriter:
    """Buffers the stream into chunks, writes each with the TTL; ``commit`` writes the metadata last."""

    def __init__(self, cache: RedisCache, key: str, total: int) -> None:
        self.cache, self.key, self.total = cache, key, total
        self.buf = bytearray()
        self.index = self.written = 0
        self.failed = False

    def feed(self, data: bytes | memoryview) -> None:
        if self.failed:
            return
        self.buf += data
        while len(self.buf) >= self.cache.chunk_bytes:
            self._flush(self.cache.chunk_bytes)

    def _flush(self, n: int) -> None:
        c = self.cache
        piece, self.buf = bytes(self.buf[:n]), self.buf[n:]
        try:
            c._call(lambda: c.client.set(c._k(self.key, str(self.index)), piece, ex=c.ttl))
        except RedisUnavailable:
            self.failed, self.buf = True, bytearray()
            return
        self.index += 1
        self.written += len(piece)

    def commit(self, sha256: str) -> bool:
        if self.buf and not self.failed:
            self._flush(len(self.buf))
        if self.failed or self.written != self.total:
            return False
        c = self.cache
        meta: dict[str, int | str] = {"total": self.total, "chunk": c.chunk_bytes, "chunks": self.index}
        meta["sha256"] = sha256
        pipe = c.client.pipeline()
        pipe.hset(c._k(self.key, "meta"), mapping=meta)  # type: ignore[arg-type]
        pipe.expire(c._k(self.key, "meta"), c.ttl)
        pipe.zadd(c._lru, {self.key: time.time()})
        pipe.hset(c._sizes, self.key, self.total)
        try:
            c._call(pipe.execute)
        except RedisUnavailable:
            return False
        c.metrics.cache_bytes.labels("redis").inc(self.total)
        return True
