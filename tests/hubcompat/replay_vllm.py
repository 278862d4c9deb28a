"""vLLM's loading of a Hub LoRA, call for call, run by one huggingface_hub version (a subprocess).

The endpoint comes from ``HF_ENDPOINT`` (vLLM passes none), as in ``vllm serve ... --lora-modules``.
Replayed from vllm-project/vllm:

1. ``vllm/lora/utils.py`` ``get_adapter_absolute_path(lora_path)``: not absolute, no ``~``, not a
   local path, so ``huggingface_hub.snapshot_download(repo_id=lora_path)``; on ``HfHubHTTPError`` /
   ``HFValidationError`` it logs and returns ``lora_path`` unchanged;
2. ``vllm/lora/peft_helper.py`` ``PEFTHelper.from_local_dir``: ``json.load`` of
   ``<dir>/adapter_config.json``, ``from_dict`` requires ``r``, ``lora_alpha``, ``target_modules``;
   ``__post_init__``: scaling ``lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``);
   ``_validate_features``: no ``modules_to_save``, no DoRA;
3. ``vllm/lora/models.py`` ``LoRAModel.from_local_checkpoint``: ``<dir>/adapter_model.safetensors``
   (else ``.bin`` / ``.pt``), every tensor name through ``parse_fine_tuned_lora_name`` (``...lora_A.weight``
   / ``lora_B.weight``, prefix ``base_model.model.``); here the safetensors header is read as bytes;
4. ``vllm/plugins/lora_resolvers/hf_hub_resolver.py`` ``HfHubResolver``: ``_get_adapter_dirs`` =
   ``HfApi().list_repo_files(repo_id=...)`` (dirs holding ``adapter_config.json``), then
   ``snapshot_download(repo_id=..., allow_patterns="*")``, then ``FilesystemResolver._get_lora_req_from_path``
   (``vllm/plugins/lora_resolvers/filesystem_resolver.py``): ``peft_type == "LORA"`` and
   ``base_model_name_or_path == base_model_name``.

Prints one JSON line. Usage: python replay_vllm.py REPO_ID BASE_MODEL_NAME MISSING_REPO_ID
"""

import json
import math
import os
import struct
import sys

import huggingface_hub
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HfHubHTTPError, HFValidationError

repo, base_model_name, missing = sys.argv[1:4]


def get_adapter_absolute_path(lora_path):
    if os.path.isabs(lora_path):
        return lora_path
    if lora_path.startswith("~"):
        return os.path.expanduser(lora_path)
    if os.path.exists(lora_path):
        return os.path.abspath(lora_path)
    try:
        return huggingface_hub.snapshot_download(repo_id=lora_path)
    except (HfHubHTTPError, HFValidationError):
        return lora_path


def peft_helper(lora_path):
    with open(os.path.join(lora_path, "adapter_config.json")) as f:
        config = json.load(f)
    missing_fields = {"r", "lora_alpha", "target_modules"} - set(config)
    assert not missing_fields, missing_fields
    assert not config.get("modules_to_save") and not config.get("use_dora"), config
    r, alpha = config["r"], config["lora_alpha"]
    return config, (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


def parse_fine_tuned_lora_name(name):
    start = 2 if "base_model.model." in name else 0
    parts = name.split(".")
    if parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[start:-2]), parts[-2] == "lora_A"
    raise ValueError(f"{name} is unsupported LoRA weight")


def from_local_checkpoint(lora_dir):
    path = os.path.join(lora_dir, "adapter_model.safetensors")
    assert os.path.isfile(path), os.listdir(lora_dir)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return sorted({parse_fine_tuned_lora_name(k)[0] for k in header if k != "__metadata__"})


def hub_resolver(lora_name, base):
    repo_files = HfApi().list_repo_files(repo_id=lora_name)
    adapter_dirs = {os.path.dirname(n) for n in repo_files if n.endswith("adapter_config.json")}
    if "adapter_config.json" in repo_files:
        adapter_dirs.add(".")
    if "." not in adapter_dirs:
        return None
    repo_path = snapshot_download(repo_id=lora_name, allow_patterns="*")
    with open(os.path.join(repo_path, ".", "adapter_config.json")) as file:
        adapter_config = json.load(file)
    ok = adapter_config["peft_type"] == "LORA" and adapter_config["base_model_name_or_path"] == base
    return os.path.join(repo_path, ".") if ok else None


path = get_adapter_absolute_path(repo)
config, scaling = peft_helper(path)
modules = from_local_checkpoint(path)
print(json.dumps({
    "path_is_snapshot": os.path.isabs(path) and os.path.basename(os.path.dirname(path)) == "snapshots",
    "commit": os.path.basename(path),
    "r": config["r"], "scaling": scaling, "modules": modules, "task_type": config.get("task_type"),
    "resolver": hub_resolver(repo, base_model_name) is not None,
    "resolver_other_base": hub_resolver(repo, base_model_name + "-other") is not None,
    "missing": get_adapter_absolute_path(missing),  # vLLM: logged, the name comes back unchanged
}))  # fmt: skip
