"""The local cache: LRU from its own access records, digest prefixes, portable locks, one client
implementation (``_sync.py`` generated from ``_async.py``), an async client that never blocks its loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from filelock import FileLock

import client
from client._cache import LocalCache

ROOT = Path(__file__).resolve().parents[2]


def test_prune_evicts_by_use_not_atime(tmp_path):
    cache = LocalCache(tmp_path)
    old, new = cache.put_bytes(b"a" * 100), cache.put_bytes(b"b" * 100)
    time.sleep(0.02)
    cache.touch(old)  # `old` was used last ...
    for digest in (old, new):  # ... but a relatime/noatime mount never moved atime: both look unused
        os.utime(cache.blob(digest), (0, cache.blob(digest).stat().st_mtime))
    assert cache.prune(max_bytes=100) == [new]
    assert cache.has(old) and not cache.has(new)


def test_loading_a_cached_bundle_records_the_use(tmp_path, bundles):
    data = bundles.full.to_bytes()
    c = client.Client("http://unused.test", cache_dir=tmp_path, offline=True, progress=False)
    first, second = c.cache.put_bytes(data), c.cache.put_bytes(b"other")
    time.sleep(0.02)
    c.load(f"sha256:{first}")
    assert c.cache.last_access(first) > c.cache.last_access(second)
    assert c.cache.prune(max_bytes=len(data)) == [second]


def test_digest_prefixes(tmp_path):
    cache = LocalCache(tmp_path)
    digest = cache.put_bytes(b"x")
    assert cache.match_digest(digest[:16]) == cache.match_digest(f"sha256:{digest[:8].upper()}") == digest
    assert cache.match_digest("mlp") is None and cache.match_digest("0" * 7) is None
    (tmp_path / "blobs" / ("ab" * 32)).write_bytes(b"")  # two blobs sharing a prefix (names only matter)
    (tmp_path / "blobs" / ("ab" * 31 + "cd")).write_bytes(b"")
    with pytest.raises(client.InvalidArgumentError, match="matches 2 cached blobs"):
        cache.match_digest("abababab")


def test_import_client_needs_no_fcntl():
    code = "import sys; sys.modules['fcntl'] = None; import client; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_sync_client_is_generated_from_the_async_one():
    out = subprocess.run([sys.executable, "scripts/unasync.py", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_async_client_does_not_block_its_loop_on_the_file_lock(tmp_path, bundles):
    data = bundles.full.to_bytes()
    digest = hashlib.sha256(data).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"ETag": f'"{digest}"'})

    held = FileLock(LocalCache(tmp_path).file_lock(digest).lock_file, thread_local=False)
    held.acquire()  # another process is downloading this blob
    ticks, ticks_while_held = [0], []

    def release() -> None:
        ticks_while_held.append(ticks[0])
        held.release()

    threading.Timer(0.5, release).start()

    async def go() -> None:
        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.01)
                ticks[0] += 1

        task = asyncio.create_task(ticker())
        async with client.AsyncClient("http://mcnc.test", cache_dir=tmp_path, progress=False,
                                      transport=httpx.MockTransport(handler)) as c:  # fmt: skip
            await c.load(f"sha256:{digest}")
        task.cancel()

    asyncio.run(go())
    assert ticks_while_held[0] >= 10  # ~50 at 10 ms: the loop kept running while the lock was held for 0.5 s
