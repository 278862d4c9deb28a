"""The few operations whose sync and async forms differ beyond ``await``: sleeping, blocking work
and the cache's file lock.

``_async.py`` calls the ``a``-prefixed forms; ``scripts/unasync.py`` renames them to the plain
forms when it generates ``_sync.py``. The async forms run blocking work (file locks, hashing,
reading files, reconstruction) in a worker thread, so an ``AsyncClient`` never blocks its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from client._cache import LocalCache

__all__ = ["ablocking", "alock", "asleep", "blocking", "lock", "sleep"]

T = TypeVar("T")


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` here (the sync client may block: its caller waits anyway)."""
    return fn(*args, **kwargs)


async def ablocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a worker thread, so the event loop keeps running."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@contextlib.contextmanager
def lock(cache: LocalCache, digest: str) -> Iterator[None]:
    """Hold the cache's lock of ``digest`` (other processes wait for our download)."""
    with cache.file_lock(digest):
        yield


@contextlib.asynccontextmanager
async def alock(cache: LocalCache, digest: str) -> AsyncIterator[None]:
    """Hold the cache's lock of ``digest``, waiting for it in a worker thread."""
    file_lock = await asyncio.to_thread(cache.file_lock, digest)
    waiting = asyncio.ensure_future(asyncio.to_thread(file_lock.acquire))
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:
        # The thread cannot be interrupted: release the lock as soon as it has been taken.
        waiting.add_done_callback(lambda t: None if t.cancelled() or t.exception() else file_lock.release())
        raise
    try:
        yield
    finally:
        await asyncio.to_thread(file_lock.release)
