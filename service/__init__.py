"""The MCNC reconstruction server: stores bundles, streams reconstructed weights."""

from __future__ import annotations

from service.config import Settings
from service.main import create_app

__all__ = ["Settings", "create_app"]
