"""``benchmarks/decode_ab.py --quick`` runs both children and reports finite, positive numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests._scripts import ROOT, run_script


def test_decode_ab_quick_against_this_checkout(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    stdout = run_script("benchmarks/decode_ab.py", "--quick", "--against", str(ROOT), "--json", str(out), timeout=120)
    assert "this/other" in stdout and "iter_fp16" in stdout and "fp16 / fp32 stream" in stdout
    r = json.loads(out.read_text())
    for side in ("this", "other"):
        assert len(r[side]) == 1
        for key in ("kernel", "iter_fp16", "stream_fp32", "stream_fp16", "stream_bf16", "keep", "limit_gemm"):
            assert math.isfinite(r[side][0][key]) and r[side][0][key] > 0, (side, key)
