"""Every snippet a model page shows, copied from the page in Chromium and run as written against
the live server (names a snippet leaves to the reader, ``base_model``, are the tests' own copies)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mcnc_core as m
from tests._adapters import llama
from tests._hubenv import hub_child_env
from tests.ui.conftest import Registry

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _snippets(browser: object, registry: Registry, name: str) -> dict[str, str]:
    """The page's snippets by key, as the browser renders their text."""
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{registry.url}/ui/models/{name}")
        return {
            el.get_attribute("id").removeprefix("snippet-"): el.inner_text()
            for el in page.locator("#snippets pre").all()
        }
    finally:
        page.close()


def _shell(line: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MCNC_HOME": str(cwd / "home")}
    out = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, (line, out.stdout, out.stderr)


def _hub_line(line: str, registry: Registry, cwd: Path) -> None:
    """A vLLM / LoRAX line: its HF_ENDPOINT is this server and its repo id downloads through
    huggingface_hub with that endpoint set (what vLLM and LoRAX do with it; neither is installed here)."""
    words = shlex.split(line.splitlines()[0])
    assert words[0] == f"HF_ENDPOINT={registry.url}"
    if words[1] == "lorax-launcher":
        repo = re.search(r'"adapter_id": "([^"]+)"', line).group(1)  # type: ignore[union-attr]
    else:
        assert words[1:3] == ["vllm", "serve"]
        repo = words[words.index("--lora-modules") + 1].split("=", 1)[1]
    code = f"from huggingface_hub import snapshot_download; print(snapshot_download({repo!r}))"
    env = hub_child_env(cwd / "hf", HF_ENDPOINT=registry.url)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (Path(out.stdout.strip()) / "adapter_model.safetensors").is_file()


def test_full_model_snippets_run(browser: object, registry: Registry, tmp_path: Path, monkeypatch) -> None:
    snippets = _snippets(browser, registry, "acme/mlp")
    assert set(snippets) == {"pull", "load"}
    _shell(snippets["pull"], tmp_path)
    want = m.reconstruct(m.Bundle.from_bytes(registry.full))
    got = load_file(tmp_path / "acme-mlp.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    monkeypatch.setenv("MCNC_HOME", str(tmp_path / "home"))
    scope: dict[str, object] = {}
    exec(snippets["load"], scope)
    assert all(torch.equal(scope["weights"][k], want[k]) for k in want)  # type: ignore[index]


def test_delta_with_base_snippets_run(browser: object, registry: Registry, tmp_path: Path, monkeypatch) -> None:
    snippets = _snippets(browser, registry, "team/mlp-ft")
    assert {"pull", "load"} <= set(snippets)
    _shell(snippets["pull"], tmp_path)
    assert (tmp_path / "team-mlp-ft.safetensors").is_file()
    monkeypatch.setenv("MCNC_HOME", str(tmp_path / "home"))
    scope: dict[str, object] = {}
    exec(snippets["load"], scope)
    assert scope["weights"].keys() == registry.mlp_base.keys()  # type: ignore[attr-defined]


def test_adapter_snippets_run(
    browser: object, registry: Registry, tmp_path: Path, monkeypatch, hub_online: None
) -> None:
    snippets = _snippets(browser, registry, "acme/llama-lora")
    assert set(snippets) == {"load", "pull-peft", "snapshot", "peft", "vllm", "lorax"}
    _shell(snippets["pull-peft"], tmp_path)
    assert (tmp_path / "acme-llama-lora-adapter" / "adapter_config.json").is_file()
    monkeypatch.setenv("MCNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    scope: dict[str, object] = {"base_model": registry.lora.base}
    exec(snippets["load"], scope)  # base_model: the caller's state dict of the base
    want = m.reconstruct(registry.lora.bundle, base=registry.lora.base)
    assert all(torch.equal(scope["weights"][k], want[k]) for k in want)  # type: ignore[index]
    scope = {}
    exec(snippets["snapshot"], scope)
    assert (Path(scope["path"]) / "adapter_model.safetensors").is_file()  # type: ignore[arg-type]
    scope = {"base_model": llama(0)}
    exec(snippets["peft"], scope)
    lora = [n for n, _ in scope["model"].named_parameters() if "lora_A" in n]  # type: ignore[attr-defined]
    assert len(lora) == 2 * 5  # 2 layers x the 5 targeted projections
    for key in ("vllm", "lorax"):
        _hub_line(snippets[key], registry, tmp_path)
