"""``benchmarks/reconstruct.py --quick`` runs and reports finite, positive numbers (timings are not asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reconstruct_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reconstruct.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "of limit" in proc.stdout and "PRANC" in proc.stdout and "NOLA" in proc.stdout
    r = json.loads(out.read_text())
    assert r["quick"] is True and 500_000 < r["params"] < 2_000_000
    for key in (
        "gemm_flops",
        "write_bw_warm",
        "write_bw_fresh",
        "limit_params_per_s",
        "mcnc_iter_params_per_s",
        "mcnc_reconstruct_params_per_s",
        "fraction_iter",
        "fraction_reconstruct",
        "nola_params_per_s",
        "pranc_params_per_s",
        "ratio_over_nola",
        "ratio_over_pranc",
    ):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
