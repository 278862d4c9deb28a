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


def _in_type_checking(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never executed: annotations only)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            if (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
                isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
            ):
                skip.update(id(n) for n in ast.walk(node))
    return skip


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, at the top or inside functions (lazy imports
    count: they hide a cycle, they do not remove it). ``from pkg import name`` adds ``pkg.name`` when
    that is a module, else ``pkg``. A module's own parent packages are left out: importing a
    submodule always initialises them first, so they are no cycle."""
    modules: dict[str, Path] = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _in_type_checking(tree)
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        parents = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{target}.{a.name}" for a in node.names} & modules.keys()
                edges.update(subs or ({target} & modules.keys()))
        graph[mod] = edges - parents - {mod}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle a depth-first search meets, each as ``[a, b, ..., a]``."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_find_cycles_sees_lazy_imports():
    """The checker itself: a cycle through an import inside a function is found."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": set()}
    assert find_cycles(graph) == [["p.a", "p.b", "p.a"]]
    assert find_cycles({"p.a": {"p.b"}, "p.b": set()}) == []
    lazy = ast.parse("def f():\n    from mcnc_core.reconstruct import iter_reconstruct\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(lazy)) and not _in_type_checking(lazy)


def test_no_import_cycles_inside_a_package():
    for package in ("mcnc_core", "service", "client"):
        if (ROOT / package).is_dir():
            assert find_cycles(import_graph(package)) == [], package


def test_routes_never_import_routes():
    for path in (ROOT / "service" / "routers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("service.routers"), (path.name, node.module)
