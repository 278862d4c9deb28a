"""Smoke test: ``benchmarks/ablation.py --quick`` runs, prints finite numbers and writes its table."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ablation.py"

pytest.importorskip("mnist1d")


def test_ablation_quick(tmp_path: Path) -> None:
    out = tmp_path / "ablation.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| base |")]
    assert len(rows) == 1, proc.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    acc_mean, acc_std = (float(v) for v in re.findall(r"[-\d.]+|nan|inf", cells[2]))
    stored = int(cells[3])
    target_ratio, overall_ratio, seconds = (float(c.rstrip("x")) for c in cells[4:7])
    for v in (acc_mean, acc_std, target_ratio, overall_ratio, seconds):
        assert math.isfinite(v)
    assert acc_mean > 10.0  # above chance (10 classes) even after 100 steps
    assert stored > 0
    assert target_ratio > 50 and overall_ratio > 10
    text = out.read_text()
    assert "benchmarks/ablation.py --quick" in text and "| base |" in text
