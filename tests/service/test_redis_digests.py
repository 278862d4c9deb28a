"""Tier-2 chunk digests against real Redis: BLAKE3 with an ``algo`` tag for new entries, sha256 for
entries written before the tag (a rolling upgrade serves them), an unknown tag a miss."""

from __future__ import annotations

import hashlib

import blake3
import pytest
import redis
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.metrics import Metrics
from service.redis_cache import RedisCache, RedisUnavailable
from tests.service._helpers import metric, served_reconstructions

pytestmark = pytest.mark.redis

CHUNK = 1024


def _app(tmp_path, url: str, prefix: str) -> TestClient:
    settings = Settings(
        data_dir=tmp_path, redis_url=url, redis_prefix=prefix, redis_chunk_bytes=CHUNK, memory_cache_bytes=0
    )
    return TestClient(create_app(settings))  # tier 1 off: a warm hit comes from Redis or not at all


def _meta_key(r: redis.Redis, prefix: str) -> bytes:
    (key,) = list(r.scan_iter(match=prefix + "w:*:meta"))
    return key


def _chunks(r: redis.Redis, meta_key: bytes) -> list[bytes]:
    base = meta_key.removesuffix(b":meta")
    total, chunk = int(r.hget(meta_key, "total")), int(r.hget(meta_key, "chunk"))
    return [r.get(base + b":" + str(i).encode()) for i in range(-(-total // chunk))]


def _rewrite_as_before_the_tag(r: redis.Redis, meta_key: bytes) -> None:
    """The metadata hash exactly as the code before the ``algo`` tag wrote it: total, chunk, each
    chunk's sha256 under ``digests``, the whole response's sha256; no ``algo``."""
    old = {k.decode(): v for k, v in r.hgetall(meta_key).items()}
    ttl = r.ttl(meta_key)
    digests = ",".join(hashlib.sha256(c).hexdigest() for c in _chunks(r, meta_key))
    r.delete(meta_key)
    r.hset(
        meta_key, mapping={"total": old["total"], "chunk": old["chunk"], "digests": digests, "sha256": old["sha256"]}
    )
    r.expire(meta_key, ttl)


def _write_before_the_tag(cache: RedisCache, key: str, data: bytes) -> None:
    """An entry written the way the code before the tag did (reservation, chunks, then metadata)."""
    assert cache.writer(key, len(data)) is not None  # the byte reservation: the budget script is unchanged
    r = cache.client
    pieces = [data[i : i + cache.chunk_bytes] for i in range(0, len(data), cache.chunk_bytes)]
    for i, piece in enumerate(pieces):
        r.set(f"{cache.prefix}w:{key}:{i}", piece, ex=cache.ttl)
    fields = {
        "total": len(data),
        "chunk": cache.chunk_bytes,
        "digests": ",".join(hashlib.sha256(p).hexdigest() for p in pieces),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    r.hset(f"{cache.prefix}w:{key}:meta", mapping=fields)


def test_new_entries_carry_blake3_and_are_served_from_redis(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
    r = redis.Redis.from_url(url)
    meta_key = _meta_key(r, prefix)
    meta = {k.decode(): v.decode() for k, v in r.hgetall(meta_key).items()}
    chunks = _chunks(r, meta_key)
    assert meta["algo"] == "blake3" and "digests" not in meta  # an older server reads it as incomplete
    assert meta["chunk_digests"].split(",") == [blake3.blake3(c).hexdigest() for c in chunks]
    assert meta["sha256"] == hashlib.sha256(full).hexdigest()  # the response's digest stays sha256
    with _app(tmp_path, url, prefix) as c:  # a new server: every byte from tier 2
        again = c.get("/models/m/weights")
        assert again.content == full and served_reconstructions(c.app) == 0
        assert metric(c, "mcnc_cache_hits_total", tier="redis") == 1
        assert again.headers["x-mcnc-weights-digest"] == "sha256:" + meta["sha256"]


def test_an_entry_from_before_the_tag_is_checked_with_sha256_and_served(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
    r = redis.Redis.from_url(url)
    meta_key = _meta_key(r, prefix)
    _rewrite_as_before_the_tag(r, meta_key)
    with _app(tmp_path, url, prefix) as c:
        again = c.get("/models/m/weights")
        assert again.content == full and served_reconstructions(c.app) == 0  # served, not rebuilt
        assert metric(c, "mcnc_cache_hits_total", tier="redis") == 1
        assert metric(c, "mcnc_redis_errors_total") == 0
        part = c.get("/models/m/weights", headers={"Range": "bytes=1000-3000"})
        assert part.status_code == 206 and part.content == full[1000:3001]
    assert r.hget(meta_key, "digests") is not None and r.hget(meta_key, "algo") is None  # left as it was


def test_a_cache_reads_an_old_entry_and_still_catches_its_corruption(redis_url):
    url, prefix = redis_url
    cache = RedisCache(url, budget=1 << 20, ttl=60, chunk_bytes=CHUNK, prefix=prefix, metrics=Metrics())
    data = bytes(range(256)) * 20  # 5 chunks
    _write_before_the_tag(cache, "old", data)
    entry = cache.meta("old", len(data))
    assert entry is not None and entry.algo == "sha256"
    assert b"".join(cache.read("old", entry, 0, len(data))) == data
    assert b"".join(cache.read("old", entry, 1500, 2600)) == data[1500:2600]
    cache.client.set(prefix + "w:old:2", bytes(CHUNK))  # same length, other bytes
    got = bytearray()
    with pytest.raises(RedisUnavailable, match="chunk 2 of old is corrupt"):
        for piece in cache.read("old", entry, 0, len(data)):
            got += piece
    assert got == data[: 2 * CHUNK] and not cache.has("old")  # nothing of the altered chunk; entry dropped
    cache.close()


def test_a_corrupt_chunk_under_blake3_is_never_served(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
        r = redis.Redis.from_url(url)
        meta_key = _meta_key(r, prefix)
        assert r.hget(meta_key, "algo") == b"blake3"
        chunk_key = meta_key.removesuffix(b":meta") + b":1"
        altered = bytearray(r.get(chunk_key))
        altered[7] ^= 1  # one bit: same length
        r.set(chunk_key, bytes(altered))
        again = c.get("/models/m/weights")
        assert again.status_code == 200 and again.content == full  # rebuilt from the altered chunk on
        assert metric(c, "mcnc_redis_errors_total") >= 1
        assert metric(c, "mcnc_reconstructions_total", kind="partial") == 1
        assert not list(r.scan_iter(match=prefix + "w:*:meta"))  # the corrupt entry is gone


def test_an_unknown_algo_is_a_miss_not_served(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
    r = redis.Redis.from_url(url)
    meta_key = _meta_key(r, prefix)
    # A newer server's algorithm; the BLAKE3 digests still match, so ignoring the tag would serve it.
    r.hset(meta_key, "algo", "blake9")
    with _app(tmp_path, url, prefix) as c:
        key = meta_key.decode().removeprefix(prefix + "w:").removesuffix(":meta")
        assert c.app.state.engine.redis.meta(key, len(full)) is None
        assert metric(c, "mcnc_cache_misses_total", tier="redis") == 1
        again = c.get("/models/m/weights")
        assert again.status_code == 200 and again.content == full
        assert served_reconstructions(c.app) == 1  # rebuilt, never read from the entry it cannot check
        assert metric(c, "mcnc_cache_hits_total", tier="redis") == 0
    assert r.hget(meta_key, "algo") == b"blake9"  # left to the servers that know it
