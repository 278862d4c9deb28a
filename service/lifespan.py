"""Builds and closes what the app holds: store, Reconstructor (device, memory), Catalog, caches, Redis
client, the weights Engine and the adapter exports."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from service.adapters import AdapterStore
from service.cache import MemoryCache
from service.catalog import Catalog
from service.engine import Engine
from service.reconstructor import Reconstructor
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
    reconstructor = Reconstructor(settings, metrics)
    catalog = Catalog(settings, store, reconstructor)
    engine = Engine(settings, reconstructor, catalog.open_base, metrics, memory, redis)
    adapters = AdapterStore(
        catalog,
        reconstructor,
        metrics,
        dtype=settings.adapter_dtype,
        budget=settings.adapter_cache_bytes,
        disk_dir=settings.data_dir / "adapters",
        disk_budget=settings.adapter_disk_bytes,
    )
    catalog.on_delete(engine.forget)
    catalog.on_delete(adapters.forget)
    app.state.store, app.state.reconstructor, app.state.catalog = store, reconstructor, catalog
    app.state.engine, app.state.adapters = engine, adapters
    log.info(
        "mcnc service: metadata %s, blobs %s, device %s",
        store.meta.engine.url.render_as_string(hide_password=True),
        store.blobs.url,
        reconstructor.device,
    )
    try:
        yield
    finally:
        adapters.close()
        if redis is not None:
            redis.close()
        store.close()
