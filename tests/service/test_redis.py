"""Tier 2 against real Redis: hit, miss, eviction, TTL, chunking, and Redis dying mid-test."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.metrics import Metrics
from service.redis_cache import RedisCache, RedisUnavailable
from tests.service._helpers import metric, served_reconstructions

pytestmark = pytest.mark.redis


def _app(tmp_path, url: str, prefix: str, **kw) -> TestClient:
    kw.setdefault("memory_cache_bytes", 0)  # tier 1 off: every warm hit must come from Redis
    return TestClient(create_app(Settings(data_dir=tmp_path, redis_url=url, redis_prefix=prefix, **kw)))


def test_miss_then_hit_without_rebuilding(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix, redis_ttl=120) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        cold = c.get("/models/m/weights")
        assert metric(c, "mcnc_cache_misses_total", tier="redis") == 1
        warm = c.get("/models/m/weights")
        assert warm.content == cold.content and warm.headers["etag"] == cold.headers["etag"]
        assert metric(c, "mcnc_cache_hits_total", tier="redis") == 1
        assert served_reconstructions(c.app) == 1
    with _app(tmp_path, url, prefix) as c:  # a restarted server finds the bytes and their digest in Redis
        again = c.get("/models/m/weights")
        assert again.content == cold.content and served_reconstructions(c.app) == 0
        assert again.headers["x-mcnc-weights-digest"] == "sha256:" + hashlib.sha256(cold.content).hexdigest()
        r = redis.Redis.from_url(url)
        keys = sorted(k.decode() for k in r.scan_iter(match=prefix + "w:*"))
        assert keys and all(k.startswith(prefix) for k in keys)
        assert all(0 < r.ttl(k) <= 120 for k in keys)
        loaded = c.get("/models", params={"loaded": "true"}).json()["items"]
        assert [(i["tier"], i["bytes"]) for i in loaded] == [("redis", len(cold.content))]
        assert c.get("/health/ready").json()["checks"]["redis"] == "ok"


def test_small_chunks_and_ranges_from_redis(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix, redis_chunk_bytes=1024) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
        r = redis.Redis.from_url(url)
        chunks = [k for k in r.scan_iter(match=prefix + "w:*") if not k.endswith(b":meta")]
        assert len(chunks) == -(-len(full) // 1024)
        assert all(r.strlen(k) <= 1024 for k in chunks)
        for lo, hi in [(0, 10), (1000, 3000), (len(full) - 1500, len(full) - 1)]:
            part = c.get("/models/m/weights", headers={"Range": f"bytes={lo}-{hi}"})
            assert part.status_code == 206 and part.content == full[lo : hi + 1]
        assert served_reconstructions(c.app) == 1


def test_byte_budget_evicts_least_recently_used(tmp_path, tiny, tiny2, redis_url):
    url, prefix = redis_url
    budget = tiny2.bundle.reconstructed_nbytes + 2048  # room for one model's stream, not two
    with _app(tmp_path, url, prefix, redis_cache_bytes=budget) as c:
        c.post("/bundles", params={"name": "a"}, content=tiny.data)
        c.post("/bundles", params={"name": "b"}, content=tiny2.data)
        a = c.get("/models/a/weights").content
        c.get("/models/b/weights")
        assert metric(c, "mcnc_cache_evictions_total", tier="redis") == 1
        tiers = {i["digest"][:8]: i["bytes"] for i in c.get("/models", params={"loaded": "true"}).json()["items"]}
        assert len(tiers) == 1 and sum(tiers.values()) <= budget
        assert c.get("/models/a/weights").content == a  # evicted: rebuilt, same bytes
        assert served_reconstructions(c.app) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private redis-server on a free port, so this test may kill it."""
    port = _free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    try:
        proc = subprocess.Popen([*cmd, "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.skip("redis-server not installed")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("private redis-server did not start")
    yield url, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def test_redis_stopped_requests_still_succeed(tmp_path, tiny, own_redis):
    url, proc = own_redis
    with _app(tmp_path, url, "t:", redis_chunk_bytes=1024) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
        assert c.get("/models/m/weights").content == full  # a Redis hit
        engine = c.app.state.engine
        digest = c.app.state.store.meta.resolve(__import__("service").storage.parse_ref("m"))
        bundle = c.app.state.catalog.bundle(digest)
        lay = engine.layout(digest, bundle, "native")
        stream = engine.stream(lay, bundle, 0, lay.total)
        got = [bytes(next(stream)), bytes(next(stream))]  # header, then the first Redis chunk
        proc.kill()
        proc.wait(timeout=5)
        got += [bytes(p) for p in stream]  # the rest: rebuilt from where Redis stopped
        assert b"".join(got) == full
        assert metric(c, "mcnc_redis_errors_total") >= 1
        assert metric(c, "mcnc_reconstructions_total", kind="partial") == 1
        for _ in range(3):
            r = c.get("/models/m/weights")
            assert r.status_code == 200 and r.content == full
        ready = c.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "down"


def test_redis_down_from_the_start(tmp_path, tiny):
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    with _app(tmp_path, url, "t:") as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        a, b = c.get("/models/m/weights"), c.get("/models/m/weights")
        assert a.status_code == b.status_code == 200 and a.content == b.content
        assert metric(c, "mcnc_redis_errors_total") >= 1


def test_budget_stays_exact_with_concurrent_writers(redis_url):
    """Four servers' caches writing 40 entries at once: the shared total is the sum of the entries,
    within the budget, and every entry that survives is complete."""
    url, prefix = redis_url
    caches = [
        RedisCache(url, budget=10_000, ttl=60, chunk_bytes=1024, prefix=prefix, metrics=Metrics()) for _ in range(4)
    ]

    def write(i: int) -> None:
        writer = caches[i % 4].writer(f"k{i}", 3000)
        if writer is not None:
            writer.feed(bytes([i]) * 3000)
            writer.commit("unused")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    r = redis.Redis.from_url(url)
    sizes = {k.decode(): int(v) for k, v in r.hgetall(prefix + "sizes").items()}
    assert int(r.get(prefix + "used")) == sum(sizes.values()) <= 10_000
    assert sorted(m.decode() for m in r.zrange(prefix + "lru", 0, -1)) == sorted(sizes)
    for key in sizes:
        entry = caches[0].meta(key, 3000)
        assert entry is not None and b"".join(caches[0].read(key, entry, 0, 3000)) == bytes([int(key[1:])]) * 3000
    for key in sizes:  # deletes bring the shared total, and the gauge read back with it, to zero
        caches[1].delete(key)
    assert int(r.get(prefix + "used")) == 0 and r.hlen(prefix + "sizes") == 0
    assert caches[1].metrics.registry.get_sample_value("mcnc_cache_bytes", {"tier": "redis"}) == 0
    for c in caches:
        c.close()


def test_an_altered_chunk_is_never_served(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix, redis_chunk_bytes=1024) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        full = c.get("/models/m/weights").content
        r = redis.Redis.from_url(url)
        chunk = next(k for k in r.scan_iter(match=prefix + "w:*:1"))
        r.set(chunk, bytes(1024))  # same length, other bytes
        again = c.get("/models/m/weights")
        assert again.status_code == 200 and again.content == full  # rebuilt from the altered chunk on
        assert metric(c, "mcnc_redis_errors_total") >= 1
        assert not list(r.scan_iter(match=prefix + "w:*:meta"))  # the corrupt entry is gone


def test_read_ahead_serves_exact_ranges_and_stops_at_a_corrupt_chunk(redis_url):
    url, prefix = redis_url
    cache = RedisCache(url, budget=1 << 20, ttl=60, chunk_bytes=1024, prefix=prefix, metrics=Metrics())
    data = bytes(range(256)) * 40  # 10240 bytes: 10 chunks, checked READ_AHEAD ahead of the one sent
    writer = cache.writer("k", len(data))
    assert writer is not None
    writer.feed(data)
    assert writer.commit(hashlib.sha256(data).hexdigest())
    entry = cache.meta("k", len(data))
    assert entry is not None and cache.READ_AHEAD >= 1
    for start, end in [(0, len(data)), (1000, 1030), (5, 9000), (3071, 3073), (10239, 10240)]:
        assert b"".join(cache.read("k", entry, start, end)) == data[start:end]
    stream = cache.read("k", entry, 0, len(data))  # a client leaving mid-stream: nothing else happens
    assert next(stream) == data[:1024]
    stream.close()
    redis.Redis.from_url(url).set(prefix + "w:k:6", bytes(1024))  # same length, other bytes
    got = bytearray()
    with pytest.raises(RedisUnavailable, match="chunk 6 of k is corrupt"):
        for piece in cache.read("k", entry, 100, len(data)):
            got += piece
    assert got == data[100 : 6 * 1024]  # every byte before the altered chunk, none of it or after
    assert cache.meta("k", len(data)) is None and not cache.has("k")  # the corrupt entry is gone
    assert cache.metrics.registry.get_sample_value("mcnc_redis_errors_total") >= 1
    cache.close()


def test_a_dead_flight_lock_holder_delays_but_does_not_block(tmp_path, tiny, redis_url):
    url, prefix = redis_url
    with _app(tmp_path, url, prefix) as c:
        digest = c.post("/bundles", params={"name": "m"}, content=tiny.data).json()["id"]
        key = c.app.state.engine.layout(digest, c.app.state.catalog.bundle(digest), "native").key
        r = redis.Redis.from_url(url)
        assert r.lock(f"{prefix}flight:{key}", timeout=1.5).acquire(blocking=False)  # a server that then died
        t0 = time.monotonic()
        got = c.get("/models/m/weights")
        assert got.status_code == 200 and 1.0 < time.monotonic() - t0 < 30
        assert metric(c, "mcnc_reconstructions_total", kind="full") == 1
