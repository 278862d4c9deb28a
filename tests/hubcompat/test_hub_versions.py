"""The Hub routes against the huggingface_hub versions LoRAX and vLLM install, each in its own venv
(``_venvs.py``), over real HTTP on loopback; plus the ``main`` rule and offline commit pins on 2.x."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import huggingface_hub
import pytest
from huggingface_hub import constants as hub_constants

from service import Settings
from service.storage import commit_id
from tests._adapters import LoraDelta, lora_delta
from tests._hubenv import hub_child_env
from tests._live import LiveServer
from tests.hubcompat._venvs import hub_python

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server")) as srv:
        yield srv


def push(live: LiveServer, data: bytes, name: str, tag: str | None = None) -> str:
    params = {"name": name} | ({"tag": tag} if tag else {})
    r = httpx.post(f"{live.url}/bundles", params=params, content=data, timeout=60)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("version", ["0.23.5", "0.25.2"])
def test_lorax_call_sequence_and_missing_repo_on_old_huggingface_hub(live, case, tmp_path, version):
    """LoRAX pins huggingface-hub ^0.23.2 (its ModelInfo needs downloads/likes); vLLM's floor sits in
    0.x: the replay of LoRAX's calls succeeds and a missing repo raises RepositoryNotFoundError."""
    digest = push(live, case.bundle.to_bytes(), "acme/lora", "v1")  # no tag main: main = this push
    env = hub_child_env(tmp_path / "hf")
    out = subprocess.run(
        [str(hub_python(version)), str(HERE / "replay_lorax.py"), live.url, "acme/lora", "acme/nothing"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["sha"] == commit_id(digest, []) and got["downloads"] == 0
    assert got["config_json"] is False and got["r"] == 8 and got["task_type"] == "CAUSAL_LM"
    assert got["weights"] == ["adapter_model.safetensors"] and got["weight_bytes"] > 0
    assert got["missing"] == "RepositoryNotFoundError"


def test_main_follows_pushes_unless_a_tag_main_exists(live, case):
    api = huggingface_hub.HfApi(endpoint=live.url, token=False)
    first = push(live, case.bundle.to_bytes(), "acme/x", "v1")
    assert api.model_info("acme/x").sha == commit_id(first, [])
    second = push(live, lora_delta(seed=1).bundle.to_bytes(), "acme/x", "v2")
    assert api.model_info("acme/x").sha == commit_id(second, [])  # main moved with the push
    push(live, case.bundle.to_bytes(), "acme/x", "main")
    push(live, lora_delta(seed=1).bundle.to_bytes(), "acme/x", "v3")
    assert api.model_info("acme/x").sha == commit_id(first, [])  # an explicit tag main stays main
    assert api.model_info("acme/x", revision=commit_id(second, [])).sha == commit_id(second, [])  # commit pin


def test_a_commit_pin_is_reused_offline_on_huggingface_hub_2(live, case, tmp_path, monkeypatch):
    """huggingface_hub treats only 40-hex revisions as commits (``REGEX_COMMIT_HASH``); offline,
    ``snapshot_download`` then finds ``snapshots/<commit>`` without any request."""
    digest = push(live, case.bundle.to_bytes(), "acme/pin", "v1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    cache, commit = tmp_path / "cache", commit_id(digest, [])
    online = huggingface_hub.snapshot_download("acme/pin", revision=commit, endpoint=live.url, cache_dir=cache,
                                               token=False)  # fmt: skip
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    offline = huggingface_hub.snapshot_download("acme/pin", revision=commit, endpoint="http://127.0.0.1:9",
                                                cache_dir=cache, token=False)  # fmt: skip
    assert offline == online and Path(offline).name == commit
