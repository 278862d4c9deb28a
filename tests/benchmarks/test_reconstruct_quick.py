"""``benchmarks/reconstruct.py --quick`` runs and reports finite, positive numbers (timings are not asserted)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from tests._scripts import run_script


def test_reconstruct_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    stdout = run_script("benchmarks/reconstruct.py", "--quick", "--json", str(out), timeout=120)
    assert "of limit" in stdout and "PRANC" in stdout and "NOLA" in stdout
    r = json.loads(out.read_text())
    assert r["quick"] is True and 500_000 < r["params"] < 2_000_000
    for key in (
        "gemm_flops",
        "write_bw_warm",
        "write_bw_fresh",
        "limit_params_per_s",
        "mcnc_iter_params_per_s",
        "mcnc_reconstruct_params_per_s",
        "mcnc_iter_shared_params_per_s",
        "mcnc_into_params_per_s",
        "fraction_into",
        "fraction_iter",
        "fraction_reconstruct",
        "nola_params_per_s",
        "pranc_params_per_s",
        "ratio_over_nola",
        "ratio_over_pranc",
    ):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    if shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"):  # the FMA microkernel compiles
        assert r["fma_unavailable"] is None and "of peak" in stdout
        assert r["fma_peak_flops"] >= r["fma_all_core_flops"] > 0 and r["fma_one_core_flops"] > 0
        for kind in ("compute_only", "iter", "iter_shared", "into", "reconstruct"):
            assert 0 < r[f"fma_fraction_{kind}"] < 1, kind  # useful FLOPs can never beat the FMA peak
