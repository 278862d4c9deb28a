"""Import direction and public surface: mcnc_core depends on neither service nor client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mcnc_core

ROOT = Path(__file__).parent.parent


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_core_imports_neither_service_nor_client():
    assert not {"service", "client"} & _imports("mcnc_core")


def test_service_and_client_do_not_import_each_other():
    if (ROOT / "service").is_dir():
        assert "client" not in _imports("service")
    if (ROOT / "client").is_dir():
        assert "service" not in _imports("client")


def test_public_api_is_sorted_and_complete():
    assert mcnc_core.__all__ == sorted(mcnc_core.__all__)
    for name in mcnc_core.__all__:
        assert hasattr(mcnc_core, name), name
    for name in ("MCNCConfig", "compress", "export_bundle", "save_bundle", "load_bundle", "reconstruct",
                 "iter_reconstruct", "materialize", "MCNCError", "BundleError", "ConfigError"):  # fmt: skip
        assert name in mcnc_core.__all__


def test_cli_inspect_and_verify(tmp_path):
    data = ROOT / "tests" / "data"
    run = [sys.executable, "-m", "mcnc_core"]
    out = subprocess.run([*run, "inspect", str(data / "golden_full_v1.mcnc"), "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and '"mode": "full"' in out.stdout
    ok = subprocess.run(
        [*run, "verify", str(data / "golden_delta_r2_v1.mcnc"), "--base", str(data / "golden_base_v1.safetensors")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 329 parameters")
    no_base = subprocess.run([*run, "verify", str(data / "golden_delta_r2_v1.mcnc")], capture_output=True, text=True)
    assert no_base.returncode == 2 and "needs its base" in no_base.stderr
    broken = tmp_path / "broken.mcnc"
    broken.write_bytes((data / "golden_full_v1.mcnc").read_bytes()[:-3])
    bad = subprocess.run([*run, "inspect", str(broken)], capture_output=True, text=True)
    assert bad.returncode == 2 and "truncated" in bad.stderr
