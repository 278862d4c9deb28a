"""``create_app(settings=None)``: the FastAPI application factory, with ``/docs`` served offline.

Swagger UI's files come from the ``swagger-ui-bundle`` package (FastAPI's self-hosting recipe),
never from a CDN: ``/docs`` works on a machine without internet access. ``/openapi.json``
declares the bearer scheme on every route that takes a token.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

import mcnc_core
from service.api import api_router
from service.config import Settings, get_settings, is_loopback
from service.errors import ERROR_CODES, InsecureBindError, install_error_handlers
from service.http_guard import (
    HostOriginMiddleware,
    QuietStalledReaders,
    SendTimeoutMiddleware,
    UploadBudget,
    allowed_hosts,
)
from service.lifespan import lifespan
from service.metrics import Metrics, MetricsMiddleware
from service.ratelimit import RateLimiter
from service.schemas import ErrorResponse

__all__ = ["check_bind", "create_app"]

DOCS_ASSETS = "/docs-assets"
OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})  # no token, ever (docs/service.md)
log = logging.getLogger("mcnc.service")


def __getattr__(name: str) -> Any:
    """``service.main:app`` for ``uvicorn service.main:app``: built on first access, from the environment."""
    if name == "app":
        instance = create_app()
        globals()["app"] = instance
        return instance
    raise AttributeError(name)


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback host without tokens unless ``MCNC_ALLOW_INSECURE=1``, which is logged
    as a WARNING when it is what lets the server start.

    Raises:
        InsecureBindError: naming the host and both ways out.
    """
    if settings.tokens() or is_loopback(settings.host):
        return
    if not settings.allow_insecure:
        raise InsecureBindError(
            f"refusing to serve on {settings.host} without API tokens: set MCNC_API_TOKENS "
            '(e.g. \'{"<token>": ["read", "write", "admin"]}\') or MCNC_ALLOW_INSECURE=1'
        )
    log.warning(
        "INSECURE: serving on %s without API tokens (MCNC_ALLOW_INSECURE=1): anyone who can reach this "
        "address can upload, read and delete every bundle; set MCNC_API_TOKENS unless a trusted proxy "
        "or network does the access control",
        settings.host,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; heavy state (store, caches, device) is created in the lifespan."""
    settings = settings or get_settings()
    check_bind(settings)
    codes = ", ".join(f"`{c}` ({s})" for c, s in sorted(ERROR_CODES.items()))
    error_doc: dict[int | str, dict[str, Any]] = {
        "4XX": {"model": ErrorResponse, "description": "Error codes: " + codes}
    }
    app = FastAPI(
        title="MCNC reconstruction service",
        version=mcnc_core.__version__,
        lifespan=lifespan,
        responses=error_doc,
        docs_url=None,  # served below from local files
        redoc_url=None,  # ReDoc has no offline bundle here; /docs covers it
    )
    app.state.settings = settings
    app.state.tokens = settings.tokens()
    app.state.metrics = Metrics()
    app.state.rate_limiter = RateLimiter(
        settings.rate_limit, settings.rate_limit_burst, redis_url=settings.redis_url, prefix=settings.redis_prefix
    )
    app.state.uploads = UploadBudget(
        settings.max_concurrent_uploads, settings.staging_bytes, settings.max_client_uploads
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.add_middleware(SendTimeoutMiddleware, timeout=settings.write_timeout)  # innermost: the routes' sends
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietStalledReaders) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(QuietStalledReaders())
    app.add_middleware(HostOriginMiddleware, hosts=allowed_hosts(settings))
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts the refusals too
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs`` from the ``swagger-ui-bundle`` package's files, and the bearer scheme in the spec."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default_openapi()  # FastAPI's spec (cached in app.openapi_schema), completed here
            spec.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a token from MCNC_API_TOKENS"}
            }
            for path, operations in spec["paths"].items():
                if path not in OPEN_PATHS:  # every other route checks a token when tokens are configured
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
