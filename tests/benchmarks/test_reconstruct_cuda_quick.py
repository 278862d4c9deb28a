"""``benchmarks/reconstruct_cuda.py --quick``: on a CUDA machine it measures and reports finite
fractions; elsewhere it says no device was found and exits 0 (timings are not asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tests._scripts import run_script


def test_reconstruct_cuda_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    stdout = run_script("benchmarks/reconstruct_cuda.py", "--quick", "--json", str(out), timeout=300)
    if not torch.cuda.is_available():
        assert "no CUDA device" in stdout and not out.exists()
        return
    r = json.loads(out.read_text())
    assert r["quick"] is True and 500_000 < r["params"] < 2_000_000
    for kind in ("device", "device_fp16", "host", "host_fp16"):
        for key in (f"{kind}_params_per_s", f"{kind}_fraction_fp32", f"{kind}_fraction_hbm_write"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert "of FP32 GEMM" in stdout and "HBM write" in stdout
