"""Issue 18's done-when, over real HTTP on loopback: a process whose only Hub is ``HF_ENDPOINT`` = a
live server (``HF_HOME`` in tmp, ``HF_HUB_OFFLINE`` unset, nothing else reachable: nothing was ever
downloaded for these tiny models) loads

- a full-mode bundle pushed with ``--tag v1`` and a ``config.json`` sidecar, with
  ``AutoModelForCausalLM.from_pretrained("org/name")`` (revision ``main``): weights bit-identical to
  ``mcnc_core.reconstruct``, hence the same logits;
- a base registered by name (``POST /bases?name=org/base&file=config.json:<sha256>``, what
  ``mcnc push-base FILE --name org/base --file config.json`` sends) plus a delta pushed with
  ``--tag v1``, with ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("org/base"),
  "org/lora")`` and ``AutoPeftModelForCausalLM.from_pretrained("org/lora")`` (which finds the base
  through ``base_model_name_or_path``), logits within bf16 tolerance of the local reconstruction, and
  ``revision="v1:float32"`` within float32 rounding.

The loads run in a child process so that its huggingface_hub and transformers read the environment
fresh (they read ``HF_ENDPOINT`` at import).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

import mcnc_core as m
from mcnc_core.peft import peft_metadata
from service import Settings
from tests._adapters import CODES, TARGETS, llama, logits, train
from tests._hubenv import hub_child_env
from tests._live import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The child: loads what it is told from HF_ENDPOINT and saves logits (and a full model's state dict).
CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(9))
results = {}
for key, job in jobs.items():
    if job["how"] == "auto":
        model = AutoModelForCausalLM.from_pretrained(job["repo"], revision=job.get("revision"))
        results[key + ".state"] = {k: v.contiguous() for k, v in model.state_dict().items()}
    elif job["how"] == "peft":
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(job["base"])
        model = PeftModel.from_pretrained(base, job["repo"], revision=job.get("revision"))
    else:
        from peft import AutoPeftModelForCausalLM
        model = AutoPeftModelForCausalLM.from_pretrained(job["repo"], revision=job.get("revision"))
    with torch.no_grad():
        results[key] = model.eval()(input_ids=ids).logits
torch.save(results, out)
"""


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server")) as srv:  # adapters in bfloat16 (the default)
        yield srv


def upload_file(c: httpx.Client, data: bytes) -> str:
    r = c.post("/files", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["sha256"])


def push(c: httpx.Client, data: bytes, name: str, tag: str, files: dict[str, str]) -> str:
    params = [("name", name), ("tag", tag)] + [("file", f"{n}:{sha}") for n, sha in files.items()]
    r = c.post("/bundles", params=params, content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def push_base(c: httpx.Client, path: Path, name: str, files: dict[str, str]) -> None:
    """``mcnc push-base FILE --name NAME --file config.json``: the cli branch's HTTP contract."""
    params = [("name", name)] + [("file", f"{n}:{sha}") for n, sha in files.items()]
    r = c.post("/bases", params=params, content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text


def config_json(model: torch.nn.Module, tmp_path: Path) -> bytes:
    """The config.json ``model.save_pretrained`` writes (architectures included)."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp_path / "cfg")
    return (tmp_path / "cfg" / "config.json").read_bytes()


def run_child(live: LiveServer, tmp_path: Path, jobs: dict[str, dict[str, str]]) -> dict[str, object]:
    env = hub_child_env(
        tmp_path / "hf", HF_ENDPOINT=live.url, OMP_NUM_THREADS="1",
        NO_PROXY="127.0.0.1,localhost", HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
    )  # fmt: skip
    out = tmp_path / "child.pt"
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs), str(out)], env=env,
                          capture_output=True, text=True, timeout=480)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out)  # type: ignore[no-any-return]


def test_a_full_mode_bundle_loads_with_auto_model_from_pretrained(live, tmp_path):
    model = llama(seed=0)
    config = config_json(model, tmp_path)
    m.compress(model, m.MCNCConfig(**CODES))
    train(model)
    bundle = m.export_bundle(model)
    with httpx.Client(base_url=live.url, timeout=60) as c:
        push(c, bundle.to_bytes(), "org/tiny-full", "v1", {"config.json": upload_file(c, config)})
        info = c.get("/api/models/org/tiny-full").json()
    assert info["library_name"] == "transformers" and info["pipeline_tag"] == "text-generation"
    assert info["config"]["architectures"] == ["LlamaForCausalLM"] and info["mcnc"]["verified"] is True
    got = run_child(live, tmp_path, {"full": {"how": "auto", "repo": "org/tiny-full"}})

    local = m.reconstruct(bundle)  # the served dtype rule: each tensor's trained dtype, as here
    state = got["full.state"]
    assert isinstance(state, dict)
    for name, t in local.items():
        assert state[name].dtype == t.dtype and torch.equal(state[name], t), name
    fresh = llama(seed=5)
    fresh.load_state_dict(local, strict=True)
    assert torch.equal(got["full"], logits(fresh))


def test_a_named_base_and_its_adapter_load_from_one_endpoint(live, tmp_path):
    model = llama(seed=0)
    base = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    config = config_json(model, tmp_path)
    save_file(base, tmp_path / "base.safetensors")
    m.compress(model, m.MCNCConfig(mode="delta", rank=8, base_name="tiny-llama", targets=TARGETS, **CODES))
    train(model)
    bundle = m.export_bundle(model, metadata=peft_metadata(model))
    with httpx.Client(base_url=live.url, timeout=60) as c:
        push(c, bundle.to_bytes(), "org/lora", "v1", {})  # the base is not here yet: unverified
        assert c.get("/api/models/org/lora").headers["x-mcnc-verified"] == "false"
        push_base(c, tmp_path / "base.safetensors", "org/base", {"config.json": upload_file(c, config)})
        info = c.get("/api/models/org/lora/revision/v1").json()
        adapter_cfg = c.get("/org/lora/resolve/main/adapter_config.json").json()
    assert info["mcnc"]["verified"] is True and info["library_name"] == "peft"
    assert adapter_cfg["base_model_name_or_path"] == "org/base" and adapter_cfg["task_type"] == "CAUSAL_LM"
    got = run_child(live, tmp_path, {
        "peft": {"how": "peft", "repo": "org/lora", "base": "org/base"},
        "auto": {"how": "autopeft", "repo": "org/lora"},
        "exact": {"how": "autopeft", "repo": "org/lora", "revision": "v1:float32"},
        "base": {"how": "auto", "repo": "org/base"},
    })  # fmt: skip

    for name, t in base.items():  # the base repo serves the stored file as it is
        assert torch.equal(got["base.state"][name], t), name
    local = llama(seed=5)
    local.load_state_dict(m.reconstruct(bundle, base=base), strict=True)
    want = logits(local)
    # bf16 factors (the default): the adapter's rounding, as tests/core/test_peft.py bounds it
    torch.testing.assert_close(got["peft"], want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got["auto"], got["peft"], rtol=0, atol=0)
    # float32 factors: only the order of the additions differs from the merged local weights
    torch.testing.assert_close(got["exact"], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got["exact"], got["peft"])  # :float32 really served other factors
