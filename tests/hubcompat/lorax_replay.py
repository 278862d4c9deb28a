"""Replay LoRAX's Hub calls for one adapter with whatever ``huggingface_hub`` this interpreter has.

Run in a virtual environment holding only ``huggingface_hub`` (tests/service/test_hub_compat.py
makes one per version), with ``HF_ENDPOINT`` set to the server and ``HF_HOME`` to an empty folder,
as LoRAX runs (``HfApi(token=...)`` and ``hf_hub_download`` without ``endpoint=``: both read
``HF_ENDPOINT``). The calls and their order are LoRAX's (predibase/lorax, server/lorax_server):

1. ``adapters/utils.py: download_adapter_weights``: ``get_hub_api(token).model_info(adapter_id,
   revision=None)`` ("quick auth check").
2. ``utils/sources/source.py: BaseModelSource.load_config`` through ``utils/sources/hub.py:
   HubModelSource.download_file``: ``hf_hub_download(adapter_id, revision=None,
   filename="config.json")`` (errors ignored: an adapter has none), then ``"adapter_config.json"``.
3. ``utils/weights.py: download_weights`` → ``utils/sources/hub.py: weight_files`` →
   ``weight_hub_files``: ``model_info(adapter_id, revision=None)``, the top-level ``.safetensors``
   siblings, looked up in the cache by ``utils/sources/source.py: try_to_load_from_cache`` (miss:
   ``LocalEntryNotFoundError``), then ``download_weights`` (``hub.py``): per file
   ``hf_hub_download(filename=f, repo_id=adapter_id, revision=None, local_files_only=False)``.
4. ``source.get_weight_bytes()`` → ``weight_files`` again, now served from the cache.

Then, for vLLM's path, ``snapshot_download(adapter_id)``. ``errors MISSING REPO`` instead checks
that this version raises its own ``RepositoryNotFoundError`` for a missing repo,
``RevisionNotFoundError`` for a missing revision of ``REPO`` and ``EntryNotFoundError`` for a
missing file (each with the server's message). Prints one JSON line of results; any deviation
exits non-zero. ``offline REPO COMMIT`` (run with ``HF_HUB_OFFLINE=1`` after ``lorax``) finds the
snapshot pinned by ``COMMIT`` in the cache alone.

Usage: ``python lorax_replay.py lorax REPO`` | ``errors MISSING REPO`` | ``offline REPO COMMIT``
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.constants import HUGGINGFACE_HUB_CACHE

try:  # 0.23.x keeps them in utils; later releases also (and 1.x only) in errors
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
except ImportError:
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


def cached(repo_id: str, revision: str | None, filename: str) -> Path | None:
    """LoRAX's ``try_to_load_from_cache`` (utils/sources/source.py), as written there."""
    repo_cache = Path(HUGGINGFACE_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    if not repo_cache.is_dir():
        return None
    ref = repo_cache / "refs" / revision
    if ref.exists():
        revision = ref.read_text()
    snapshots = repo_cache / "snapshots"
    if not snapshots.exists() or revision not in os.listdir(snapshots):
        return None
    path = snapshots / revision / filename
    return path if path.is_file() else None


def weight_hub_files(api: HfApi, repo_id: str) -> list[str]:
    """``weight_hub_files`` (utils/sources/hub.py), ``embedding_dim=None``."""
    info = api.model_info(repo_id, revision=None)
    names = [
        s.rfilename
        for s in info.siblings
        if s.rfilename.endswith(".safetensors")
        and len(s.rfilename.split("/")) == 1
        and not any(w in s.rfilename for w in ("arguments", "args", "training"))
    ]
    if not names:
        raise SystemExit(f"no .safetensors siblings in {[s.rfilename for s in info.siblings]}")
    return names


def lorax(repo_id: str) -> dict[str, object]:
    api = HfApi(token=None)
    info = api.model_info(repo_id, revision=None)  # step 1: ModelInfo must parse (0.23.x: KeyError before)
    try:  # step 2
        hf_hub_download(repo_id, revision=None, filename="config.json", token=None)
        raise SystemExit("config.json downloaded from an adapter repo")
    except EntryNotFoundError:
        pass
    config_path = hf_hub_download(repo_id, revision=None, filename="adapter_config.json")
    adapter_config = json.loads(Path(config_path).read_text())
    names = weight_hub_files(api, repo_id)  # step 3
    if any(cached(repo_id, None, n) for n in names):
        raise SystemExit("weights cached before their download")
    files = [Path(hf_hub_download(filename=n, repo_id=repo_id, revision=None, local_files_only=False)) for n in names]
    again = [cached(repo_id, None, n) for n in weight_hub_files(api, repo_id)]  # step 4
    if again != files:
        raise SystemExit(f"cache lookup {again} != downloads {files}")
    for f in files:  # get_weight_bytes reads the safetensors header: 8-byte length, then JSON
        data = f.read_bytes()
        json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    snap = Path(snapshot_download(repo_id))  # vLLM's call
    sha256 = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(snap.iterdir())}
    return {
        "version": huggingface_hub.__version__,
        "sha": info.sha,
        "downloads": info.downloads,
        "likes": info.likes,
        "adapter_r": adapter_config["r"],
        "weights": [f.name for f in files],
        "weights_commit": files[0].parent.name,
        "snapshot_commit": snap.name,
        "snapshot_sha256": sha256,
    }


def errors(missing_repo: str, repo_id: str) -> dict[str, object]:
    api, raised = HfApi(token=None), {}
    calls = [
        (RepositoryNotFoundError, lambda: api.model_info(missing_repo)),
        (RevisionNotFoundError, lambda: api.model_info(repo_id, revision="no-such-tag")),
        (EntryNotFoundError, lambda: hf_hub_download(repo_id, "README.md")),
    ]
    for expected, call in calls:
        try:
            call()
        except expected as exc:  # exactly this version's class (a TypeError or AttributeError is no match)
            raised[expected.__name__] = str(exc)
        else:
            raise SystemExit(f"no {expected.__name__}")
    return {"version": huggingface_hub.__version__, "raised": raised}


def offline(repo_id: str, commit: str) -> dict[str, object]:
    snap = Path(snapshot_download(repo_id, revision=commit))
    return {"version": huggingface_hub.__version__, "snapshot": snap.name, "files": sorted(os.listdir(snap))}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    print(json.dumps({"lorax": lorax, "errors": errors, "offline": offline}[mode](*args)))
