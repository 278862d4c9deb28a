"""The Hub routes with the huggingface_hub releases LoRAX and older vLLM installs, each in its own
virtual environment: LoRAX's call sequence (tests/hubcompat/lorax_replay.py cites it) on 0.23.5,
which LoRAX pins (``huggingface-hub = "^0.23.2"``), and the not-found exceptions on 0.23.5 and 0.25.2.

Each environment is made once by ``python -m venv`` + ``pip install huggingface_hub==<version>``
under ``.venv-hub/<version>`` in the repository root (git-ignored) and reused while it imports
that version; the tests skip, saying why, where pip cannot install it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

import mcnc_core as m
from service import Settings
from service.hub_commits import commit_id
from tests._adapters import LoraDelta, lora_delta
from tests._live import LiveServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
REPLAY = ROOT / "tests" / "hubcompat" / "lorax_replay.py"


def _venv_python(version: str) -> Path:
    """The interpreter of ``.venv-hub/<version>``, made on first use (built aside, then renamed in:
    a half-made environment is never reused)."""
    home = ROOT / ".venv-hub" / version
    python = home / "bin" / "python"
    probe = [str(python), "-I", "-c", "import huggingface_hub as h; print(h.__version__)"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip() == version:
            return python
        shutil.rmtree(home)
    staging = home.with_name(f"{version}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True, timeout=120)
    pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "-q", f"huggingface_hub=={version}"]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.skip(f"pip cannot install huggingface_hub=={version} here: {done.stderr.strip()[-500:]}")
    try:
        staging.rename(home)
    except OSError:  # another run made it meanwhile: use that one
        shutil.rmtree(staging, ignore_errors=True)
    return python


@pytest.fixture(scope="session")
def hub_python() -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(version: str) -> Path:
        if version not in made:
            made[version] = _venv_python(version)
        return made[version]

    return get


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server", adapter_dtype="float32")) as srv:
        yield srv


def replay(python: Path, live: LiveServer, home: Path, *args: str, offline: bool = False) -> dict:
    """Run the replay as LoRAX runs: ``HF_ENDPOINT`` set, an empty ``HF_HOME``, no token, online
    (unless ``offline``: ``HF_HUB_OFFLINE=1``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "PYTHON"))}
    env |= {"HF_ENDPOINT": live.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env |= {"HF_HUB_OFFLINE": "1"} if offline else {}
    done = subprocess.run([str(python), "-I", str(REPLAY), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def push(live: LiveServer, data: bytes, name: str, tag: str) -> str:
    r = httpx.post(f"{live.url}/bundles", params={"name": name, "tag": tag}, content=data, timeout=30)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def test_lorax_call_sequence_on_huggingface_hub_0_23_5(hub_python, live, case, tmp_path):
    python = hub_python("0.23.5")
    commit = commit_id(push(live, case.bundle.to_bytes(), "acme/lorax-lora", "v1"))  # --tag v1 only: main follows
    out = replay(python, live, tmp_path / "hf", "lorax", "acme/lorax-lora")
    assert out["version"] == "0.23.5" and out["sha"] == commit and (out["downloads"], out["likes"]) == (0, 0)
    assert out["weights"] == ["adapter_model.safetensors"] and out["weights_commit"] == commit
    assert out["snapshot_commit"] == commit and out["adapter_r"] == 8
    local = m.export_peft(case.bundle, tmp_path / "local", dtype=torch.float32)
    expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(local.iterdir())}
    assert out["snapshot_sha256"] == expected  # the files LoRAX loads are the local PEFT export's
    pinned = replay(python, live, tmp_path / "hf", "offline", "acme/lorax-lora", commit, offline=True)
    assert pinned == {"version": "0.23.5", "snapshot": commit, "files": sorted(expected)}  # a 40-hex commit pin


@pytest.mark.parametrize("version", ["0.23.5", "0.25.2"])
def test_old_releases_raise_their_own_not_found_errors(hub_python, live, case, tmp_path, version):
    python = hub_python(version)
    push(live, case.bundle.to_bytes(), "acme/lorax-lora", "v1")
    out = replay(python, live, tmp_path / "hf", "errors", "acme/missing", "acme/lorax-lora")
    assert out["version"] == version
    raised = out["raised"]
    assert "no repository 'acme/missing'" in raised["RepositoryNotFoundError"]  # the server's message, parsed
    assert "has no revision 'no-such-tag'" in raised["RevisionNotFoundError"]
    assert "has no file 'README.md'" in raised["EntryNotFoundError"]
