"""``create_app(settings=None)``: the FastAPI application factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.config import Settings, get_settings, is_loopback
from service.errors import ERROR_CODES, InsecureBindError, install_error_handlers
from service.lifespan import lifespan
from service.metrics import Metrics, MetricsMiddleware
from service.ratelimit import RateLimiter
from service.routers import api_router
from service.schemas import ErrorResponse

__all__ = ["check_bind", "create_app"]


def __getattr__(name: str) -> Any:
    """``service.main:app`` for ``uvicorn service.main:app``: built on first access, from the environment."""
    if name == "app":
        instance = create_app()
        globals()["app"] = instance
        return instance
    raise AttributeError(name)


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback host without tokens unless ``MCNC_ALLOW_INSECURE=1``.

    Raises:
        InsecureBindError: naming the host and both ways out.
    """
    if not settings.tokens() and not is_loopback(settings.host) and not settings.allow_insecure:
        raise InsecureBindError(
            f"refusing to serve on {settings.host} without API tokens: set MCNC_API_TOKENS "
            '(e.g. \'{"<token>": ["read", "write", "admin"]}\') or MCNC_ALLOW_INSECURE=1'
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
        version="0.1.0",
        lifespan=lifespan,
        responses=error_doc,
    )
    app.state.settings = settings
    app.state.tokens = settings.tokens()
    app.state.metrics = Metrics()
    app.state.rate_limiter = RateLimiter(
        settings.rate_limit, settings.rate_limit_burst, redis_url=settings.redis_url, prefix=settings.redis_prefix
    )
    install_error_handlers(app)
    app.include_router(api_router)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
