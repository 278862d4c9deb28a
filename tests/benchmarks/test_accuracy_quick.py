"""Smoke test: ``benchmarks/accuracy.py --quick`` tunes on validation, reports on test, every method
with finite numbers at matched stored size (never timings); ``--seconds`` and ``--merge`` work."""

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
    report = [r for r in results if r["phase"] == "report"]
    tune = [r for r in results if r["phase"] == "tune"]
    methods = {r["method"] for r in report}
    assert {"dense", "MCNC-oc", "MCNC-r0", "PRANC", "NOLA", "pruning", "int8", "int4"} <= methods
    # learning rates are chosen on validation with the tuning seed, never a reported seed, never on test
    assert tune and all(r["eval"] == "val" and r["seed"] == 100 for r in tune)
    assert all(r["eval"] == "test" and r["seed"] == 0 for r in report)
    for r in report:
        if "na" in r or r["method"].startswith("int"):
            continue
        grid = [t for t in tune if t["method"] == r["method"] and t["frac"] == r["frac"] and "na" not in t]
        assert len(grid) == 3 and r["lr"] == max(grid, key=lambda t: t["acc"])["lr"], r["method"]
        assert math.isfinite(r["train_loss"]) and r["steps"] == 60
    for r in report:
        if "na" in r:
            continue
        assert math.isfinite(r["acc"]) and 0.0 <= r["acc"] <= 1.0
        assert r["stored_bytes"] > 0
    matched = [r for r in report if r["method"] in ("MCNC-oc", "MCNC-r0", "PRANC", "NOLA", "pruning")]
    for r in matched:  # equal stored size: within 5 % of the budget's bytes, never above the budget
        assert r["numbers"] <= r["budget"]
        assert abs(r["stored_bytes"] - matched[0]["stored_bytes"]) <= 0.05 * matched[0]["stored_bytes"]
    pranc = next(r for r in report if r["method"] == "PRANC")
    assert pranc["frozen_bytes"] == 4 * pranc["numbers"] * 22784  # its basis
    table = out.read_text()
    assert "benchmarks/accuracy.py --quick" in table and "| mnist1d-mlp | 60 steps | 2 % | MCNC-oc |" in table
    assert png.stat().st_size > 0

    # equal wall-clock: the step count comes from a timing probe, the lr from the run above
    js2 = tmp_path / "sec.json"
    run_script(
        "benchmarks/accuracy.py",
        "--quick",
        "--methods",
        "MCNC-oc",
        "NOLA",
        "--seconds",
        "0.3",
        "--lr-from",
        str(js),
        "--json",
        str(js2),
        timeout=240,
        cwd=tmp_path,
    )
    sec = json.loads(js2.read_text())["results"]
    assert {r["phase"] for r in sec} == {"report"} and {r["method"] for r in sec} == {"MCNC-oc", "NOLA"}
    for r in sec:
        assert r["seconds_budget"] == 0.3 and r["steps"] >= 1 and r["setting"] == "0.3 s"
        assert r["lr"] == next(q["lr"] for q in report if q["method"] == r["method"])
    merged = tmp_path / "merged.md"
    run_script("benchmarks/accuracy.py", "--merge", str(js), str(js2), "--out", str(merged), timeout=120, cwd=tmp_path)
    assert "| mnist1d-mlp | 0.3 s | 2 % | MCNC-oc |" in merged.read_text()
