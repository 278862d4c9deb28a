"""``benchmarks/registry_scale.py --quick``: the metadata part fills SQLite (and PostgreSQL when one
answers) and reports finite p50/p99 figures and a query plan for every read; the fleet part runs a
live server, pushes its adapters over HTTP, fetches them cold and warm with the Hub's requests and
from nginx (skipped when nginx is not installed), with every byte accounted for. Timings are never
asserted."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests._scripts import run_script


def test_registry_scale_metadata_quick(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ("--quick", "--parts", "metadata", "--json", str(out))
    stdout = run_script("benchmarks/registry_scale.py", *args, timeout=240)
    got = json.loads(out.read_text())
    results = got["metadata"]
    assert got["fleet"] is None
    assert results[0]["dialect"] == "sqlite" and "sqlite: 2,000 bundles" in stdout
    if len(results) == 1:
        assert "# postgresql: skipped" in stdout
    for r in results:
        assert r["rows"] == 2000 and r["tags"] > 4000 and r["size_bytes"] > 0 and r["push_bundles_per_s"] > 0
        assert set(r["reads"]) == {"resolve_tag", "tags_named", "tags_for", "list_page"}
        assert all(math.isfinite(v["p99_ms"]) and v["p99_ms"] >= v["p50_ms"] > 0 for v in r["reads"].values())
        assert all(e["plan"] for e in r["explain"].values())


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="no nginx")
def test_registry_scale_fleet_quick(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    stdout = run_script("benchmarks/registry_scale.py", "--quick", "--parts", "fleet", "--json", str(out), timeout=240)
    f = json.loads(out.read_text())["fleet"]
    assert f["n"] == 16 and f["shape"] == "tiny" and f["hot"] == 4
    # 16 names: v1 each, v2 each, main for every third (0, 3, ..., 15)
    assert f["tags"] == 16 + 16 + 6 and f["tag_pushes"] + f["tags_inserted"] == 22
    assert f["blob_bytes"] == 16 * f["bundle_bytes"] and f["db_bytes"] > 0
    assert "same bytes" in f["hf_check"]
    cold, warm, nginx = f["cold"], f["warm"], f["nginx"]
    assert cold["adapters"] == 4 and cold["errors"] == 0 and cold["bytes"] == 4 * f["adapter_bytes"]
    assert len(warm) == len(nginx) == 2
    for leg in [cold, *warm, *nginx]:
        assert leg["errors"] == 0 and leg["bytes"] == leg["adapters"] * f["adapter_bytes"]
        assert math.isfinite(leg["p99_ms"]) and leg["p99_ms"] >= leg["p50_ms"] > 0
    assert warm[0]["adapters"] == nginx[0]["adapters"] == 4 * 2
    s = f["summary"]
    assert s["warm_ratio_median"] > 0 and s["cold_ratio"] > 0
    assert ("warm / nginx" in stdout) and ("cold / nginx" in stdout) and "bytes on disk: mcnc" in stdout
