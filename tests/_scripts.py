"""Run a repository script (benchmark or example) as a subprocess, the way a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(path: str, *args: str, timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """Run ``python <ROOT/path> args...``; fail the test with its output unless it exits 0.

    Returns:
        Its standard output.
    """
    proc = subprocess.run(
        [sys.executable, str(ROOT / path), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )
    assert proc.returncode == 0, f"{path} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
