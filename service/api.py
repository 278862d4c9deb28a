"""All routers, included into one ``api_router`` (routers never import each other; this module gathers them)."""

from __future__ import annotations

from fastapi import APIRouter

from service import ui
from service.routers import bases, bundles, files, health, hub, hub_listing, models, weights

__all__ = ["api_router"]

api_router = APIRouter()
# Order matters where path parameters span segments ("org/name"): the Hub listing routes first (hub's
# /api/models/{repo_id:path} would match /api/models/{repo}/refs and /commits/...), then the Hub routes
# (their "/resolve/" segment is a reserved word in names), and /models/{ref}/weights before /models/{ref}.
for _module in (hub_listing, hub, health, bundles, files, weights, models, bases):
    api_router.include_router(_module.router)
api_router.include_router(ui.router)  # the web pages: `/` and `/ui/...` (service/ui)
