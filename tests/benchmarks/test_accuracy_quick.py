"""Smoke test: ``benchmarks/accuracy.py --quick`` runs every method and reports finite numbers (never timings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")


def test_accuracy_quick(tmp_path: Path) -> None:
    out, js, png = tmp_path / "acc.md", tmp_path / "acc.json", tmp_path / "acc.png"
    run_script(
        "benchmarks/accuracy.py",
        "--quick",
        "--out",
        str(out),
        "--json",
        str(js),
        "--plot",
        str(png),
        timeout=240,
        cwd=tmp_path,
    )
    results = json.loads(js.read_text())["results"]
    methods = {r["method"] for r in results}
    assert {"dense", "MCNC", "MCNC r=8", "PRANC", "NOLA", "pruning", "int8", "int4"} <= methods
    for r in results:
        if "na" in r:
            continue
        assert math.isfinite(r["acc"]) and 0.0 <= r["acc"] <= 1.0
        assert r["stored_bytes"] > 0
    matched = [r for r in results if r["method"] in ("MCNC", "MCNC r=8", "PRANC", "NOLA", "pruning")]
    for r in matched:  # equal stored size: within 5 % of the budget's bytes, never above it by more than a seed
        assert r["numbers"] <= r["budget"]
        assert abs(r["stored_bytes"] - matched[0]["stored_bytes"]) <= 0.05 * matched[0]["stored_bytes"]
    table = out.read_text()
    assert "benchmarks/accuracy.py --quick" in table and "| mnist1d-mlp | 2 % | MCNC |" in table
    assert png.stat().st_size > 0
