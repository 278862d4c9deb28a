"""The environment of a child process that talks to our server through huggingface_hub."""

from __future__ import annotations

import os
from pathlib import Path

# huggingface_hub reads its offline switch from HF_HUB_OFFLINE *or* TRANSFORMERS_OFFLINE (constants.py),
# and CI machines set both so that nothing reaches a real hub. A child that must reach our loopback
# server drops every HF_*/HUGGING*/TRANSFORMERS_* variable and gets a private HF_HOME.
_HUB_PREFIXES = ("HF_", "HUGGING", "TRANSFORMERS_")


def hub_child_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """``os.environ`` without any Hub/transformers setting, plus ``HF_HOME=hf_home``, telemetry off, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_HUB_PREFIXES)}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env
