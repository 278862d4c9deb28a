"""``benchmarks/registry_scale.py --quick`` fills SQLite (and PostgreSQL when one answers) and reports
finite p50/p99 figures and a query plan for every read. Timings are never asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests._scripts import run_script


def test_registry_scale_quick(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    stdout = run_script("benchmarks/registry_scale.py", "--quick", "--json", str(out), timeout=240)
    results = json.loads(out.read_text())
    assert results[0]["dialect"] == "sqlite" and "sqlite: 2,000 bundles" in stdout
    if len(results) == 1:
        assert "# postgresql: skipped" in stdout
    for r in results:
        assert r["rows"] == 2000 and r["tags"] > 4000 and r["size_bytes"] > 0 and r["push_bundles_per_s"] > 0
        assert set(r["reads"]) == {"resolve_tag", "tags_named", "tags_for", "list_page"}
        assert all(math.isfinite(v["p99_ms"]) and v["p99_ms"] >= v["p50_ms"] > 0 for v in r["reads"].values())
        assert all(e["plan"] for e in r["explain"].values())
