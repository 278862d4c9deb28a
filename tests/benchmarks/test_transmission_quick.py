"""Smoke test: ``benchmarks/transmission.py --quick`` runs and reports finite, positive numbers.

Timings are never asserted (shared CI machines); only that the numbers exist and make sense.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests._scripts import run_script


def test_transmission_quick(tmp_path: Path) -> None:
    out = tmp_path / "transmission.json"
    stdout = run_script("benchmarks/transmission.py", "--quick", "--json", str(out), timeout=120)
    table = [line for line in stdout.splitlines() if line.startswith("| mlp (full) | 100 Mbit/s |")]
    assert len(table) == 1, stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "mlp" and row["link"] == "100 Mbit/s"
    numbers = [row["ratio"], *row["bundle"].values(), *row["full"].values()]
    assert all(math.isfinite(v) for v in numbers), row
    assert row["ratio"] > 0 and row["bundle"]["seconds"] > 0 and row["full"]["seconds"] > 0
    # What travelled: the bundle is far smaller than the float32 weights, and each path received its file.
    assert row["bundle"]["bytes"] == row["bundle_file_bytes"] > 0
    assert row["full"]["bytes"] == row["full_file_bytes"] > 10 * row["bundle_file_bytes"]
    assert row["bundle"]["full_bytes"] > 0
