"""Every test here talks to our loopback server through huggingface_hub, so it runs online (the
root conftest's ``hub_online``) even where the machine sets offline mode."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _hub_online(hub_online: None) -> None:
    """A test may still switch offline mode itself (monkeypatch undoes both)."""
