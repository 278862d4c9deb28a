"""Smoke test: ``benchmarks/horizon.py --quick`` trains both modes and ``--report`` reads its lines back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("mnist1d")


def test_horizon_quick_and_report(tmp_path: Path) -> None:
    out = tmp_path / "runs.jsonl"
    claims = tmp_path / "claims.jsonl"
    run_script("benchmarks/horizon.py", "--quick", "--out", str(out), "--claims", str(claims), timeout=120)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["task"], r["mode"], r["horizon"], r["eval"]) for r in rows} == {
        ("mlp-full", "full", 30, "val"),
        ("mlp-delta", "delta", 30, "val"),
    }
    assert all(math.isfinite(r["acc"]) and 0 <= r["acc"] <= 1 for r in rows)
    report = run_script("benchmarks/horizon.py", "--report", "--out", str(out), timeout=60)
    assert "mlp-full (full mode)" in report and "mlp-delta (delta mode)" in report
    # a second --quick finds its runs done and trains nothing (resumable sweep)
    again = run_script("benchmarks/horizon.py", "--quick", "--out", str(out), "--claims", str(claims), timeout=120)
    assert "0 runs to do" in again and len(out.read_text().splitlines()) == 2
