"""The copy-paste lines a model page offers, built from the model's facts and the server's URL.

Each snippet is runnable as written against this server (``tests/ui/test_snippets.py`` runs every
one a page shows, copied from the page, against a live server); the only names a snippet does not
define itself are listed in ``needs`` and said in its comment (``base_model``: the reader's own
copy of the base). vLLM and LoRAX lines are given for deltas that have a PEFT form; what they do
with ``HF_ENDPOINT`` is the ``huggingface_hub`` download the snapshot snippet runs.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Literal

__all__ = ["VLLM_LORA_RANKS", "Snippet", "model_snippets"]

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's --max-lora-rank choices (docs/peft.md)


@dataclass(frozen=True)
class Snippet:
    key: str  # stable id (the page's element id is "snippet-<key>")
    title: str
    language: Literal["console", "python"]
    text: str
    needs: tuple[str, ...] = ()  # names the reader supplies (Python snippets)


def _py(value: str) -> str:
    return json.dumps(value)  # a double-quoted Python string literal (names and URLs are ASCII)


def _slug(name: str) -> str:
    return name.replace("/", "-")


def _lora_rank(rank: int) -> int:
    return next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])


def model_snippets(
    *,
    endpoint: str,
    name: str,
    tag: str,
    mode: str,
    base_registered: bool,
    base_name: str | None,
    rank: int | None,
    main_tag: str | None = None,
) -> list[Snippet]:
    """The snippets for ``name:tag`` on the server at ``endpoint`` (no trailing slash).

    Full-mode bundles, and deltas whose base is registered here, get weights (``mcnc pull`` to a
    safetensors file, ``client.load``); deltas get their PEFT adapter (``mcnc pull --format peft``,
    ``snapshot_download``, ``PeftModel``, vLLM, LoRAX). A delta without its base here loads in
    Python with ``base=`` the reader's copy. vLLM and LoRAX take a repo id without a revision:
    they serve ``main_tag`` (what ``main`` resolves to), which their titles say.
    """
    ref, slug, url = f"{name}:{tag}", _slug(name), shlex.quote(endpoint)
    delta = mode == "delta"
    out: list[Snippet] = []
    if not delta or base_registered:
        out.append(
            Snippet(
                "pull",
                "Weights with the mcnc command",
                "console",
                f"mcnc pull {shlex.quote(ref)} --endpoint {url} -o {shlex.quote(slug + '.safetensors')}",
            )
        )
    load = f"with Client({_py(endpoint)}) as client:\n"
    if delta and not base_registered:
        load += (
            f"    # base_model: your copy of the base{f' ({base_name})' if base_name else ''}, a module or state dict\n"
            f"    weights = client.load({_py(ref)}, base=base_model)  # dict of tensors\n"
        )
        needs: tuple[str, ...] = ("base_model",)
    else:
        load += f"    weights = client.load({_py(ref)})  # dict of tensors, reconstructed here\n"
        needs = ()
    out.append(
        Snippet("load", "Weights in Python (mcnc client)", "python", "from client import Client\n\n" + load, needs)
    )
    if not delta:
        return out
    adapter_dir = shlex.quote(f"{slug}-adapter/")
    snapshot = f"path = snapshot_download(repo_id={_py(name)}, revision={_py(tag)}, endpoint={_py(endpoint)})\n"
    base_label = base_name or "the base model"
    main = f"{name}:{main_tag or tag}"
    lora_rank = _lora_rank(rank or 1)
    hub_base = shlex.quote(base_name) if base_name else "BASE_MODEL_ID"
    out += [
        Snippet(
            "pull-peft",
            "PEFT adapter with the mcnc command",
            "console",
            f"mcnc pull {shlex.quote(ref)} --endpoint {url} --format peft -o {adapter_dir}",
        ),
        Snippet(
            "snapshot",
            "PEFT adapter with huggingface_hub",
            "python",
            "from huggingface_hub import snapshot_download\n\n" + snapshot,
        ),
        Snippet(
            "peft",
            "Apply it with peft",
            "python",
            "from huggingface_hub import snapshot_download\nfrom peft import PeftModel\n\n"
            + snapshot
            + f"# base_model: {base_label}, loaded with transformers\n"
            + "model = PeftModel.from_pretrained(base_model, path)\n",
            ("base_model",),
        ),
        Snippet(
            "vllm",
            f"Serve it with vLLM (serves {main}, the name's main revision)",
            "console",
            f"HF_ENDPOINT={url} vllm serve {hub_base} --enable-lora --max-lora-rank {lora_rank} "
            f"--lora-modules {shlex.quote(slug)}={shlex.quote(name)}",
        ),
        Snippet(
            "lorax",
            f"Serve it with LoRAX (serves {main})",
            "console",
            f"HF_ENDPOINT={url} lorax-launcher --model-id {hub_base}\n"
            f"# then request with: {json.dumps({'adapter_id': name, 'adapter_source': 'hub'})}",
        ),
    ]
    return out
