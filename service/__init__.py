"""The MCNC reconstruction server: stores bundles, streams reconstructed weights.

``Settings`` and ``create_app`` load on first use (PEP 562): the ``mcnc`` command imports
``service.cli`` to list ``serve`` in its help, which must not import FastAPI or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.config import Settings
    from service.main import create_app

__all__ = ["Settings", "create_app"]

_LAZY = {"Settings": "service.config", "create_app": "service.main"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
