"""Every test here talks to our loopback server through huggingface_hub, so it must be online even
where the machine sets ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` (CI does, so that nothing
reaches a real hub). Child processes get a clean environment from ``tests._hubenv.hub_child_env``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from huggingface_hub import constants as hub_constants


@pytest.fixture(autouse=True)
def _hub_online(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # the flag is read once, at import; a test may still switch it itself (monkeypatch undoes both)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    yield
