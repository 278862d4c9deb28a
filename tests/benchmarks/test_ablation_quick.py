"""Smoke test: ``benchmarks/ablation.py --quick`` runs, prints finite numbers and writes its table."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("mnist1d")


def test_ablation_quick(tmp_path: Path) -> None:
    out = tmp_path / "ablation.md"
    stdout = run_script("benchmarks/ablation.py", "--quick", "--out", str(out), timeout=120, cwd=tmp_path)
    rows = [line for line in stdout.splitlines() if line.startswith("| base |")]
    assert len(rows) == 1, stdout
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
