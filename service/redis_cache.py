"""Tier 2: the exact bytes of full weights responses in Redis, shared by every server using it.

Keys never go stale: they are the model key ``<bundle digest>:<dtype>:<profile>``, never a name.
An entry is the response in chunks of at most 8 MiB (``<prefix>w:<key>:<i>``) plus a metadata hash
written last (with each chunk's digest, BLAKE3 since the ``algo`` tag: see ``_CHUNK_HASHES``), all
with a TTL; a sorted set orders entries by last use,
and Lua scripts keep the byte budget exact with any number of writers. Flight locks
(``<prefix>flight:<key>``: a token under a short lease, renewed by the holder while it makes
progress) let one server reconstruct a key for all; a holder that dies is replaced within a lease.
Any Redis failure is a logged warning, a metric and a miss; after one, Redis is skipped for ``RETRY_AFTER_S`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import blake3
import redis

from service.metrics import Metrics

__all__ = ["RedisCache", "RedisEntry", "RedisUnavailable", "RedisWriter"]

log = logging.getLogger("mcnc.service.redis_cache")
T = TypeVar("T")


class RedisUnavailable(Exception):
    """A Redis operation failed or an entry was incomplete or corrupt (already logged and counted)."""


# The chunk digests an entry may name. The check guards against accidental corruption and an entry
# inconsistent with its own metadata (a chunk overwritten, truncated or lost), not against whoever
# can write Redis: the digests live in the same Redis as the chunks (docs/service.md, "Caching").
# BLAKE3 is what new entries get: still a cryptographic hash, and faster than sha256 per byte on
# the CPUs measured (docs/benchmarks.md, "The Redis tier against Redis itself"), hashing being
# this path's largest CPU cost. Both release the GIL on large inputs, so the read-ahead pool hashes in parallel.
_CHUNK_HASHES: dict[str, Callable[[bytes], str]] = {
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
    "blake3": lambda data: blake3.blake3(data).hexdigest(),
}
WRITE_ALGO = "blake3"
# Field layout of the metadata hash. An untagged entry (written before ``algo`` existed) lists
# sha256 digests under ``digests``; a tagged one lists its ``algo``'s digests under ``chunk_digests``,
# a field older servers do not read, so during a rolling upgrade they find a new entry incomplete (a
# quiet miss and a rebuild) instead of corrupt (an error, and the entry deleted under its readers).
_LEGACY_ALGO, _LEGACY_FIELD, _TAGGED_FIELD = "sha256", "digests", "chunk_digests"
_UNKNOWN_SEEN: set[str] = set()


# Budget bookkeeping runs inside Redis, atomically, so any number of replicas writing at once keep
# the byte budget and the LRU order exact: ``<prefix>used`` is the sum of ``<prefix>sizes``, and an
# entry leaves both, the LRU set and its chunks in the same script. Chunk keys are derived from the
# member (standalone Redis or one hash slot; Redis Cluster would need hash tags in the keys).
_LUA_DROP = """
local function drop(prefix, member, chunk)
  local size = tonumber(redis.call('HGET', KEYS[2], member) or '0')
  redis.call('DEL', prefix .. 'w:' .. member .. ':meta')
  for i = 0, math.ceil(size / chunk) - 1 do redis.call('DEL', prefix .. 'w:' .. member .. ':' .. i) end
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  return size
end
"""
# KEYS: lru, sizes, used. ARGV: member, size, budget, now, prefix, chunk -> {reserved 0/1, evicted, used}
_LUA_RESERVE = (
    _LUA_DROP
    + """
local member, size, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, chunk = ARGV[5], tonumber(ARGV[6])
local used = tonumber(redis.call('GET', KEYS[3]) or '0') - drop(prefix, member, chunk)
local evicted = 0
while used + size > budget do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 then used = 0 break end  -- nothing left to evict: nothing is held
  used = used - drop(prefix, oldest[1], chunk)
  evicted = evicted + 1
end
if used + size > budget then
  redis.call('SET', KEYS[3], used)
  return {0, evicted, used}
end
redis.call('HSET', KEYS[2], member, size)
redis.call('ZADD', KEYS[1], ARGV[4], member)  -- a reservation is evictable like any entry
used = used + size
redis.call('SET', KEYS[3], used)
return {1, evicted, used}
"""
)
# KEYS: lru, sizes, used. ARGV: member, prefix, chunk -> used
_LUA_DELETE = (
    _LUA_DROP
    + """
local used = tonumber(redis.call('GET', KEYS[3]) or '0') - drop(ARGV[2], ARGV[1], tonumber(ARGV[3]))
if used < 0 then used = 0 end
redis.call('SET', KEYS[3], used)
return used
"""
)
# KEYS: lease. ARGV: token, ms -> 1 if renewed (still ours), else 0
_LUA_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lease. ARGV: token -> 1 if released (it was ours), else 0
_LUA_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lru, sizes, meta. ARGV: member, now, ttl, then field/value pairs -> 1, or 0 when evicted meanwhile
_LUA_COMMIT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class RedisEntry:
    """A complete tier-2 entry: its length, chunk size, each chunk's digest (checked on read) and the
    algorithm of those digests (a key of ``_CHUNK_HASHES``)."""

    total: int
    chunk: int
    digests: tuple[str, ...]
    algo: str


def _parse_entry(raw: dict[str, str]) -> RedisEntry | None:
    """The entry a metadata hash describes; None if a field is missing or malformed, or its ``algo``
    is one this server does not know (a newer server's entry: never served unchecked)."""
    algo = raw.get("algo")
    field = _TAGGED_FIELD if algo is not None else _LEGACY_FIELD
    algo = _LEGACY_ALGO if algo is None else algo
    if algo not in _CHUNK_HASHES:
        if algo not in _UNKNOWN_SEEN:  # once per name: a newer fleet's entries would log every request
            _UNKNOWN_SEEN.add(algo)
            log.warning("tier-2 entries with chunk digest %r (unknown here) are treated as misses", algo)
        return None
    try:
        return RedisEntry(int(raw["total"]), int(raw["chunk"]), tuple(raw[field].split(",")), algo)
    except (KeyError, ValueError):
        return None


class RedisCache:
    """Tier 2 (sync client: called from worker threads, never on the event loop)."""

    RETRY_AFTER_S = 2.0
    # A flight lease lives this long unless its holder renews it (every third of it, while its
    # reconstruction makes progress): a killed holder is replaced within seconds (issue 19 N4).
    FLIGHT_LEASE_S = 3.0
    READ_AHEAD = 2  # chunks fetched and checked while one is sent: up to 3 chunks held per stream

    def __init__(self, url: str, *, budget: int, ttl: int, chunk_bytes: int, prefix: str, metrics: Metrics) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2.0)
        self.budget, self.ttl, self.chunk_bytes, self.prefix = budget, ttl, chunk_bytes, prefix
        self.metrics = metrics
        self._down_until = 0.0
        self._lru, self._sizes, self._used = prefix + "lru", prefix + "sizes", prefix + "used"
        self._reserve = self.client.register_script(_LUA_RESERVE)
        self._delete = self.client.register_script(_LUA_DELETE)
        self._commit = self.client.register_script(_LUA_COMMIT)
        self._renew = self.client.register_script(_LUA_RENEW)
        self._release = self.client.register_script(_LUA_RELEASE)
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

    def _set_used(self, used: Any) -> None:
        self.metrics.cache_bytes.labels("redis").set(max(0, int(used)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def ping(self) -> bool:
        try:
            return bool(self._call(self.client.ping))
        except RedisUnavailable:
            return False

    def meta(self, key: str, total: int) -> RedisEntry | None:
        """The entry if complete and of the expected length; counts a hit or a miss.

        One round trip: reads the metadata and marks the entry used (``ZADD XX``) together. An entry
        tagged with an ``algo`` this server does not know is a miss (rebuilt, never served unchecked).
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self._k(key, "meta"))
        pipe.zadd(self._lru, {key: time.time()}, xx=True)
        try:
            replies: Any = self._call(pipe.execute)
        except RedisUnavailable:
            return None
        entry = _parse_entry({k.decode(): v.decode() for k, v in replies[0].items()})
        if entry is None or entry.total != total or entry.chunk <= 0 or len(entry.digests) != -(-total // entry.chunk):
            self.metrics.misses.labels("redis").inc()
            return None
        self.metrics.hits.labels("redis").inc()
        return entry

    def has(self, key: str, *, quiet: bool = True) -> bool:
        """Whether a complete entry exists (no hit/miss accounting); a Redis failure is False, or with
        ``quiet=False`` raises ``RedisUnavailable``."""
        try:
            return bool(self._call(lambda: self.client.exists(self._k(key, "meta"))))
        except RedisUnavailable:
            if not quiet:
                raise
            return False

    def weights_digest(self, key: str) -> str | None:
        """The sha256 of the whole stored response, recorded when the entry was written."""
        try:
            value: Any = self._call(lambda: self.client.hget(self._k(key, "meta"), "sha256"))
        except RedisUnavailable:
            return None
        return value.decode() if isinstance(value, bytes) else None

    def read(self, key: str, entry: RedisEntry, start: int, end: int) -> Iterator[bytes]:
        """Yield bytes ``[start, end)``; raises ``RedisUnavailable`` if a chunk is gone, altered, or Redis fails.

        Every chunk is checked against the digest recorded when it was written (``entry.algo``)
        before any of its bytes leave (a corrupt entry is deleted). Chunks are fetched and checked in the pool,
        ``READ_AHEAD`` of them while the current one is sent, so GETs, hashing and the send overlap
        on separate cores (each releases the GIL): hashing is the largest cost of this path
        (docs/benchmarks.md, "Serving").
        """
        chunk = entry.chunk
        first, last = start // chunk, (end - 1) // chunk
        ahead: deque[Future[bytes]] = deque()
        following = first  # the next chunk to submit
        pos = start
        try:
            for i in range(first, last + 1):
                while following <= last and len(ahead) <= self.READ_AHEAD:
                    ahead.append(self._pool.submit(self._checked_chunk, key, entry, following))
                    following += 1
                data = ahead.popleft().result()
                lo, hi = pos - i * chunk, min(end - i * chunk, len(data))
                yield data if (lo, hi) == (0, len(data)) else data[lo:hi]
                pos += hi - lo
        finally:
            for f in ahead:  # the client went away or a chunk failed: fetch no further
                f.cancel()

    def _checked_chunk(self, key: str, entry: RedisEntry, i: int) -> bytes:
        """Chunk ``i`` once its length and digest match the entry (runs in the pool)."""
        data: Any = self._call(lambda: self.client.get(self._k(key, str(i))))
        if not isinstance(data, bytes) or len(data) != min(entry.chunk, entry.total - i * entry.chunk):
            raise RedisUnavailable(f"chunk {i} of {key} missing or truncated")
        if _CHUNK_HASHES[entry.algo](data) != entry.digests[i]:
            self.metrics.redis_errors.inc()
            log.error("tier-2 chunk %d of %s does not match its %s digest; dropping the entry", i, key, entry.algo)
            with contextlib.suppress(RedisUnavailable):
                self.delete(key)
            raise RedisUnavailable(f"chunk {i} of {key} is corrupt")
        return data

    def writer(self, key: str, total: int) -> RedisWriter | None:
        """A writer for a new entry, after reserving its bytes (evicting LRU entries); None if it cannot fit."""
        if total > self.budget:
            return None
        args: list[str | int | float] = [key, total, self.budget, time.time(), self.prefix, self.chunk_bytes]
        try:
            reply: Any = self._call(lambda: self._reserve(keys=[self._lru, self._sizes, self._used], args=args))
        except RedisUnavailable:
            return None
        reserved, evicted, used = (int(x) for x in reply)
        if evicted:
            self.metrics.evictions.labels("redis").inc(evicted)
        self._set_used(used)
        return RedisWriter(self, key, total) if reserved else None

    def claim(self, key: str) -> str | None:
        """The cluster-wide right to reconstruct ``key``: a token under a ``FLIGHT_LEASE_S`` lease, or
        None while another server holds it. The holder ``renew``s it while working and ``release``s it
        when done; it is not tied to a thread.

        Raises:
            RedisUnavailable: Redis failed (reconstruct without coordination).
        """
        token = secrets.token_hex(16)
        ms = int(self.FLIGHT_LEASE_S * 1000)
        ok = self._call(lambda: self.client.set(f"{self.prefix}flight:{key}", token, nx=True, px=ms))
        return token if ok else None

    def renew(self, key: str, token: str) -> bool:
        """Extend the lease by ``FLIGHT_LEASE_S``; False when it was lost (expired and taken, or Redis
        failed): a lost lease only costs another server a duplicate rebuild."""
        ms = int(self.FLIGHT_LEASE_S * 1000)
        try:
            return bool(self._call(lambda: self._renew(keys=[f"{self.prefix}flight:{key}"], args=[token, ms])))
        except RedisUnavailable:
            return False

    def release(self, key: str, token: str) -> None:
        """Give the lease up (only if still ours)."""
        with contextlib.suppress(RedisUnavailable):
            self._call(lambda: self._release(keys=[f"{self.prefix}flight:{key}"], args=[token]))

    def delete(self, key: str) -> None:
        """Remove an entry (or a reservation) and its bytes from the budget."""
        args: list[str | int] = [key, self.prefix, self.chunk_bytes]
        used: Any = self._call(lambda: self._delete(keys=[self._lru, self._sizes, self._used], args=args))
        self._set_used(used)

    def drop_digest(self, digest: str) -> None:
        try:
            members: Any = self._call(lambda: self.client.zrange(self._lru, 0, -1))
            for m in members:
                if m.decode().startswith(digest + ":"):
                    self.delete(m.decode())
        except RedisUnavailable:
            pass

    def loaded(self) -> list[tuple[str, int, float]]:
        """``(model key, bytes, last use)`` of complete entries in the LRU set."""
        try:
            members: Any = self._call(lambda: self.client.zrange(self._lru, 0, -1, withscores=True))
            sizes: Any = self._call(lambda: self.client.hgetall(self._sizes))
            pipe = self.client.pipeline(transaction=False)
            for m, _ in members:
                pipe.exists(self._k(m.decode(), "meta"))
            complete: Any = self._call(pipe.execute)
        except RedisUnavailable:
            return []
        return [
            (m.decode(), int(sizes.get(m, 0)), float(s)) for (m, s), ok in zip(members, complete, strict=True) if ok
        ]


class RedisWriter:
    """Buffers the stream into chunks, writes each with the TTL; ``commit`` writes the metadata last."""

    def __init__(self, cache: RedisCache, key: str, total: int) -> None:
        self.cache, self.key, self.total = cache, key, total
        self.buf = bytearray()
        self.index = self.written = 0
        self.digests: list[str] = []
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
        self.digests.append(_CHUNK_HASHES[WRITE_ALGO](piece))
        self.index += 1
        self.written += len(piece)

    def commit(self, sha256: str) -> bool:
        """Write the metadata (the entry becomes visible; ``sha256`` is the whole response's, served as
        its weights digest); False, and the reservation is released, on failure."""
        if self.buf and not self.failed:
            self._flush(len(self.buf))
        c = self.cache
        if not self.failed and self.written == self.total:
            fields = {
                "total": self.total,
                "chunk": c.chunk_bytes,
                "algo": WRITE_ALGO,
                _TAGGED_FIELD: ",".join(self.digests),
                "sha256": sha256,
            }
            args: list[Any] = [self.key, time.time(), c.ttl]
            for k, v in fields.items():
                args += [k, v]
            keys = [c._lru, c._sizes, c._k(self.key, "meta")]
            try:
                if c._call(lambda: c._commit(keys=keys, args=args)):
                    return True
            except RedisUnavailable:
                return False  # Redis is down: the reservation goes with the next eviction or delete
        with contextlib.suppress(RedisUnavailable):  # evicted meanwhile, or a chunk failed: release it all
            c.delete(self.key)
        return False
