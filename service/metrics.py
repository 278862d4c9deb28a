"""Prometheus metrics (one registry per app) and the ASGI middleware that records requests."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http_server import ZEROCOPY

__all__ = ["Metrics", "MetricsMiddleware"]


class Metrics:
    """The ``mcnc_*`` metrics of one app instance."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mcnc_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("mcnc_request_seconds", "HTTP request latency", ["route", "method"], registry=r)
        self.bytes_out = Counter("mcnc_bytes_out_total", "Response body bytes sent", ["route"], registry=r)
        self.reconstructions = Counter(
            "mcnc_reconstructions_total", "Reconstructions run", ["kind"], registry=r
        )  # kind: full (single flight job) or partial (Range / fallback)
        self.reconstruction_seconds = Histogram(
            "mcnc_reconstruction_seconds", "Reconstruction wall time", ["kind"], registry=r
        )
        self.hits = Counter("mcnc_cache_hits_total", "Cache hits", ["tier"], registry=r)
        self.misses = Counter("mcnc_cache_misses_total", "Cache misses", ["tier"], registry=r)
        self.evictions = Counter("mcnc_cache_evictions_total", "Cache evictions", ["tier"], registry=r)
        self.cache_bytes = Gauge("mcnc_cache_bytes", "Bytes held per tier", ["tier"], registry=r)
        self.redis_errors = Counter("mcnc_redis_errors_total", "Redis operations that failed", registry=r)
        self.peer_waits = Counter(
            "mcnc_peer_waits_total", "Cold requests served from another server's reconstruction (via Redis)", registry=r
        )


class MetricsMiddleware:
    """Pure ASGI (no buffering): counts requests, latency and body bytes by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, sent = time.perf_counter(), 500, 0

        async def wrapped(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == ZEROCOPY:  # a file range the server sends itself (os.sendfile)
                sent += int(message["count"])
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route: Any = scope.get("route")
            # "/models/{ref:path}" is labelled "/models/{ref}": labels name routes, not converters.
            path = (getattr(route, "path", None) or "unmatched").replace(":path}", "}")
            method = scope.get("method", "")
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - start)
            self.metrics.bytes_out.labels(path).inc(sent)
