"""One virtual environment per huggingface_hub version, under the git-ignored ``.venv-hub/<version>``
(created on first use, reused after: ``pip install huggingface_hub==X`` with this venv's pip)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".venv-hub"


def hub_python(version: str) -> Path:
    """The python of a venv holding exactly ``huggingface_hub==version`` (and its dependencies)."""
    venv = CACHE / version
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"huggingface_hub=={version}"],
            check=True,
            timeout=600,
        )
        stamp.write_text(version + "\n")
    return python
