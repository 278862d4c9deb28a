"""Smoke test: ``examples/train_and_bundle.py --quick`` trains, bundles, reconstructs and beats chance."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("mnist1d")


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_train_and_bundle_quick(tmp_path: Path) -> None:
    out = tmp_path / "mlp.mcnc.safetensors"
    stdout = run_script("examples/train_and_bundle.py", "--quick", "--out", str(out), timeout=120, cwd=tmp_path)
    text = stdout
    acc_trained = _number(r"test accuracy \(trained\):\s+([\d.]+) %", text)
    acc_rebuilt = _number(r"test accuracy \(reconstructed\):\s+([\d.]+) %", text)
    bundle_bytes = _number(r"bundle bytes: (\d+)", text)
    dense_bytes = _number(r"uncompressed bytes \(float32 safetensors\): (\d+)", text)
    ratio = _number(r"ratio: ([\d.]+)x", text)
    for v in (acc_trained, acc_rebuilt, bundle_bytes, dense_bytes, ratio):
        assert math.isfinite(v)
    assert acc_trained > 15.0  # chance is 10 %
    assert acc_rebuilt == acc_trained
    assert out.stat().st_size == bundle_bytes
    assert ratio >= 50.0
    assert ratio == pytest.approx(dense_bytes / bundle_bytes, abs=0.05)
