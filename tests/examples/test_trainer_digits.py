"""``examples/trainer_digits.py --quick``: MCNC inside ``transformers.Trainer``, bundle exported and rebuilt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("transformers")
pytest.importorskip("sklearn")


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_trainer_digits_quick(tmp_path: Path) -> None:
    import torch

    import mcnc_core as mc

    out = tmp_path / "digits.mcnc.safetensors"
    text = run_script("examples/trainer_digits.py", "--quick", "--out", str(out), timeout=180, cwd=tmp_path)
    trained = _number(r"test accuracy \(trained\):\s+([\d.]+) %", text)
    rebuilt = _number(r"test accuracy \(reconstructed\):\s+([\d.]+) %", text)
    assert trained > 50.0  # chance is 10 %; 150 steps reach ~90 %
    assert rebuilt == trained
    assert out.stat().st_size == _number(r"bundle bytes: (\d+)", text)

    # The file on its own: a verified state dict that loads strictly into the uncompressed model.
    state = mc.reconstruct(mc.load_bundle(out), verify=True)
    assert set(state) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert state["net.0.weight"].shape == (128, 64) and torch.isfinite(state["net.0.weight"]).all()
