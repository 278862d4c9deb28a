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
    assert "v2" in cells[1] and "rank=128" in cells[1]  # the recipe's base point: generator v2, over-complete
    acc_mean, acc_std = (float(v) for v in re.findall(r"[-\d.]+|nan|inf", cells[2]))
    chunk, stored, seconds = int(cells[3]), int(cells[4]), float(cells[5])
    for v in (acc_mean, acc_std, seconds):
        assert math.isfinite(v)
    assert acc_mean > 10.0  # above chance (10 classes) even after 60 steps
    assert 0 < stored <= round(0.02 * 22784)  # the 2 % budget holds
    assert chunk > 128  # over-complete factors at 2 %: chunks larger than a layer's row
    text = out.read_text()
    assert "benchmarks/ablation.py --quick" in text and "split=validation" in text


def test_recipe_on_test_beats_the_landed_recipe(tmp_path: Path) -> None:
    # The --test path (retrain on train + validation, score on test) for two seeds: the chosen
    # recipe (generator v2, over-complete rank 128, param_groups) stays well above the landed v1
    # recipe (41.2 % on five seeds) on the task. Five seeds give 47.9 ± 0.9 (docs/ablation.md).
    stdout = run_script(
        "benchmarks/ablation.py", "--test", "--seeds", "10", "11", "--factors", "base", timeout=240, cwd=tmp_path
    )
    row = next(line for line in stdout.splitlines() if line.startswith("| base |"))
    mean = float(row.split("|")[3].split("±")[0])
    assert mean >= 45.0, row
