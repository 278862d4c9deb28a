"""All routers, included into one ``api_router`` (routers never import each other; this module gathers them)."""

from __future__ import annotations

from fastapi import APIRouter

from service import ui
from service.routers import bases, bundles, files, health, hub, models, weights

__all__ = ["api_router"]

api_router = APIRouter()
# Order matters where path parameters span segments ("org/name"): the Hub routes first (their
# "/resolve/" segment is a reserved word in names), and /models/{ref}/weights before /models/{ref}.
for _module in (hub, health, bundles, files, weights, models, bases):
    api_router.include_router(_module.router)
api_router.include_router(ui.router)  # the web pages: `/` and `/ui/...` (service/ui)
