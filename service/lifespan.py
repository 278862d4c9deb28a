"""Builds and closes what the app holds: store, caches, Redis client, device, engine, adapter exports."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from service.adapters import AdapterStore
from service.cache import MemoryCache
from service.engine import Engine
from service.redis_cache import RedisCache
from service.storage import Store

__all__ = ["lifespan"]

log = logging.getLogger("mcnc.service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings, metrics = app.state.settings, app.state.metrics
    store = await run_in_threadpool(Store.open, settings)  # may migrate the embedded database
    memory = MemoryCache(settings.memory_cache_bytes, metrics)
    redis = None
    if settings.redis_url:
        redis = RedisCache(
            settings.redis_url,
            budget=settings.redis_cache_bytes,
            ttl=settings.redis_ttl,
            chunk_bytes=settings.redis_chunk_bytes,
            prefix=settings.redis_prefix,
            metrics=metrics,
        )
        if not redis.ping():
            log.warning("Redis at %s is not answering; tier 2 stays off until it does", settings.redis_url)
    app.state.store = store
    app.state.engine = Engine(settings, store, metrics, memory, redis)
    app.state.adapters = AdapterStore(
        app.state.engine, dtype=settings.adapter_dtype, budget=settings.adapter_cache_bytes
    )
    log.info(
        "mcnc service: metadata %s, blobs %s, device %s",
        store.meta.engine.url.render_as_string(hide_password=True),
        store.blobs.url,
        app.state.engine.device,
    )
    try:
        yield
    finally:
        if redis is not None:
            redis.close()
        store.close()
