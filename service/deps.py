"""Dependencies: app state accessors, token auth with scopes, rate limits keyed on the authenticated identity."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from service.adapters import AdapterStore
from service.catalog import Catalog
from service.config import Settings
from service.engine import Engine
from service.errors import ForbiddenError, UnauthorizedError
from service.storage import Store

__all__ = ["AdaptersDep", "CatalogDep", "EngineDep", "SettingsDep", "StoreDep", "require"]

_IMPLIED = {"read": {"read", "write", "admin"}, "write": {"write", "admin"}, "admin": {"admin"}}


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _store(request: Request) -> Store:
    return request.app.state.store  # type: ignore[no-any-return]


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _catalog(request: Request) -> Catalog:
    return request.app.state.catalog  # type: ignore[no-any-return]


def _adapters(request: Request) -> AdapterStore:
    return request.app.state.adapters  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
EngineDep = Annotated[Engine, Depends(_engine)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
AdaptersDep = Annotated[AdapterStore, Depends(_adapters)]


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
        tokens: dict[str, frozenset[str]] = state.tokens
        token = _bearer(request)
        scopes = _scopes_for(token, tokens) if token is not None and tokens else None
        # Key the limit on who the request proved to be: a made-up token per request must not get a
        # fresh allowance (it counts against its address), and the key never holds the secret itself.
        if scopes is not None and token is not None:
            identity = "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        else:
            identity = f"ip:{request.client.host if request.client else 'unknown'}"
        state.rate_limiter.check(identity)
        if not tokens or (scope == "read" and state.settings.public_read):
            return
        if token is None:
            raise UnauthorizedError(
                f"this endpoint needs a token with {scope!r} scope: send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scopes is None:
            raise UnauthorizedError("unknown token", headers={"WWW-Authenticate": "Bearer"})
        if not scopes & _IMPLIED[scope]:
            raise ForbiddenError(f"this token lacks the {scope!r} scope (it has {sorted(scopes)})")

    return check
