"""LoRAX's Hub adapter loading, call for call, run by one huggingface_hub version (a subprocess).

Replayed from predibase/lorax ``server/lorax_server/adapters/utils.py`` (``download_adapter_weights``:
``get_hub_api(token).model_info(adapter_id, revision=None)``) and
``server/lorax_server/utils/sources/hub.py`` (``HubModelSource.download_file``: ``hf_hub_download``
of ``config.json`` with errors ignored, then ``adapter_config.json``; ``weight_hub_files``: the
``*.safetensors`` siblings at depth 1; ``download_weights``: ``hf_hub_download`` of each), then
``source.py``'s ``get_weight_bytes`` (the safetensors header). Prints one JSON line.

Usage: python replay_lorax.py ENDPOINT REPO_ID MISSING_REPO_ID
"""

import json
import struct
import sys

from huggingface_hub import HfApi, hf_hub_download

try:  # 0.23-0.25 export them from utils; 1.x/2.x from errors
    from huggingface_hub.errors import RepositoryNotFoundError
except ImportError:  # pragma: no cover - old versions
    from huggingface_hub.utils import RepositoryNotFoundError

endpoint, repo, missing = sys.argv[1:4]
api = HfApi(endpoint=endpoint, token=False)
info = api.model_info(repo, revision=None)
try:
    hf_hub_download(repo, "config.json", revision=None, endpoint=endpoint, token=False)
    config = True
except Exception:  # LoRAX: download_file(..., ignore_errors=True)
    config = False
with open(hf_hub_download(repo, "adapter_config.json", endpoint=endpoint, token=False)) as f:
    adapter_config = json.load(f)
weights = [
    s.rfilename
    for s in api.model_info(repo, revision=None).siblings
    if s.rfilename.endswith(".safetensors") and len(s.rfilename.split("/")) == 1
]
total = 0
for name in weights:
    path = hf_hub_download(filename=name, repo_id=repo, revision=None, local_files_only=False, endpoint=endpoint,
                           token=False)  # fmt: skip
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    total += max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
try:
    api.model_info(missing)
    missing_error = None
except RepositoryNotFoundError as exc:
    missing_error = type(exc).__name__
print(json.dumps({"sha": info.sha, "downloads": info.downloads, "config_json": config, "r": adapter_config["r"],
                  "task_type": adapter_config["task_type"], "weights": weights, "weight_bytes": total,
                  "missing": missing_error}))  # fmt: skip
