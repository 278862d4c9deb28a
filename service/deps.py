"""Dependencies: app state accessors, token auth with scopes, per-token rate limiting."""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from service.adapters import AdapterStore
from service.config import Settings
from service.engine import Engine
from service.errors import ForbiddenError, RateLimitedError, UnauthorizedError
from service.storage import Store

__all__ = ["AdaptersDep", "EngineDep", "RateLimiter", "SettingsDep", "StoreDep", "require"]

_IMPLIED = {"read": {"read", "write", "admin"}, "write": {"write", "admin"}, "admin": {"admin"}}


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _adapters(request: Request) -> AdapterStore:
    return request.app.state.adapters  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
EngineDep = Annotated[Engine, Depends(_engine)]
AdaptersDep = Annotated[AdapterStore, Depends(_adapters)]


class RateLimiter:
    """Token bucket per identity: ``rate`` requests per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, identity: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(identity, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                wait = max(1, math.ceil((1.0 - tokens) / self.rate))
                self._buckets[identity] = (tokens, now)
                raise RateLimitedError(
                    f"rate limit of {self.rate:g} requests/s exceeded; retry in {wait}s",
                    headers={
                        "Retry-After": str(wait),
                        "RateLimit": f"limit={self.burst}, remaining=0, reset={wait}",
                        "RateLimit-Policy": f"{self.burst};w={max(1, round(self.burst / self.rate))}",
                    },
                )
            self._buckets[identity] = (tokens - 1.0, now)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _scopes_for(token: str, tokens: dict[str, frozenset[str]]) -> frozenset[str] | None:
    found = None
    for known, scopes in tokens.items():  # compare against every token: constant time overall
        if hmac.compare_digest(known.encode(), token.encode()):
            found = scopes
    return found


def require(scope: str) -> Callable[[Request], None]:
    """A dependency: the request needs ``scope`` (``admin`` implies ``write`` implies ``read``)."""

    def check(request: Request) -> None:
        state = request.app.state
        token = _bearer(request)
        client = request.client.host if request.client else "unknown"
        state.rate_limiter.check(f"token:{token}" if token else f"ip:{client}")
        tokens: dict[str, frozenset[str]] = state.tokens
        if not tokens or (scope == "read" and state.settings.public_read):
            return
        if token is None:
            raise UnauthorizedError(
                f"this endpoint needs a token with {scope!r} scope: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scopes = _scopes_for(token, tokens)
        if scopes is None:
            raise UnauthorizedError("unknown token", headers={"WWW-Authenticate": "Bearer"})
        if not scopes & _IMPLIED[scope]:
            raise ForbiddenError(f"this token lacks the {scope!r} scope (it has {sorted(scopes)})")

    return check
