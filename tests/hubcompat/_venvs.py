"""One virtual environment per huggingface_hub version, under the git-ignored ``.venv-hub/<version>``
(created on first use, reused after: ``pip install huggingface_hub==X`` with this venv's pip)."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv-hub"
#: The huggingface_hub releases the engines install, besides the main venv's 2.x: 0.23.5 (LoRAX pins
#: ^0.23.2), 0.25.2 (within vLLM's 0.x range), 0.36.2 (the newest 0.x, what a current vLLM resolves).
VERSIONS = ("0.23.5", "0.25.2", "0.36.2")


def hub_python(version: str) -> Path:
    """The python of a venv holding exactly ``huggingface_hub==version`` (and its dependencies)."""
    venv = CACHE / version
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    CACHE.mkdir(exist_ok=True)
    # One builder at a time (parallel test processes share the cache), and a half-built venv from an
    # interrupted run is removed whole: `venv --clear` refuses some partial trees.
    with open(CACHE / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"huggingface_hub=={version}"],
                check=True,
                timeout=600,
            )
            stamp.write_text(version + "\n")
    return python
