"""All routers, included into one ``api_router``."""

from __future__ import annotations

from fastapi import APIRouter

from service.routers import bases, bundles, health, models, weights

__all__ = ["api_router"]

api_router = APIRouter()
for _module in (health, bundles, models, weights, bases):
    api_router.include_router(_module.router)
