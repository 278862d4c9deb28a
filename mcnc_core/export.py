"""``export_bundle``: a compressed model to a ``Bundle``; ``peft_metadata``: what PEFT needs to know of it.

The one module that reads a trained model (``mcnc_core.compress``'s state) to write a bundle: the
format module (``mcnc_core.bundle``) and the PEFT export (``mcnc_core.peft``) read bundles only.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from torch import Tensor, nn

from mcnc_core.bundle import Bundle
from mcnc_core.compress import base_state_dict, get_state
from mcnc_core.errors import ModelError
from mcnc_core.fingerprint import state_digest, tensor_fingerprint
from mcnc_core.manifest import BaseRef
from mcnc_core.reconstruct import iter_reconstruct
from mcnc_core.safetensors_io import TORCH_TO_DTYPE

__all__ = ["PEFT_METADATA_KEY", "export_bundle", "peft_metadata"]

#: Bundle metadata: JSON ``{"conv1d": [module paths], "embeddings": [module paths]}``.
PEFT_METADATA_KEY = "x-peft-modules"


@torch.no_grad()
def export_bundle(model: nn.Module, *, metadata: dict[str, str] | None = None) -> Bundle:
    """Snapshot a compressed model as a ``Bundle`` (codes, raw tensors, fingerprint).

    The fingerprint is computed from a float32 reconstruction on the model's device.

    Args:
        model: a model after ``compress``.
        metadata: extra string metadata; keys must start with ``x-``.

    Raises:
        ModelError: the model is not compressed, or (delta mode) a tensor read from the base
            was changed after ``compress`` (make it ``trainable`` so it travels raw).
    """
    state = get_state(model)
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not (isinstance(k, str) and k.startswith("x-") and isinstance(v, str)):
            raise ModelError(f"metadata keys must be strings starting with 'x-' and values strings, got {k!r}: {v!r}")
    base: dict[str, Tensor] | None = None
    base_ref = None
    if state.config.mode == "delta":
        base = base_state_dict(model)
        if state_digest(base) != state.base_digest:
            changed = [n for n in base if n in dict(model.named_parameters()) and model.get_parameter(n).requires_grad]
            raise ModelError(
                f"tensors read from the base changed since compress (trainable: {changed[:5]}); "
                "list them in MCNCConfig.trainable so they travel raw"
            )
        assert state.base_digest is not None
        base_ref = BaseRef(state.config.base_name, state.base_digest)
    sd = model.state_dict()
    manifest, alphas, betas, offset = [], [], [], 0
    for e in state.entries:
        if e.storage == "mcnc":
            mw = state.targets[e.name]
            n = mw.alpha.shape[0]
            # dtypes as they are now: model.half() after compress changes what the model holds.
            manifest.append(replace(e, dtype=TORCH_TO_DTYPE[mw.out_dtype], chunk_offset=offset, chunks=n))
            alphas.append(mw.alpha.detach().float().cpu())
            betas.append(mw.beta.detach().float().cpu())
            offset += n
        elif e.storage == "raw":
            manifest.append(replace(e, dtype=TORCH_TO_DTYPE[sd[e.name].dtype]))
        else:
            manifest.append(e)
    raw = {e.name: sd[e.name].detach().cpu().clone().contiguous() for e in manifest if e.storage == "raw"}
    bundle = Bundle(
        state.generator.spec,
        state.config,
        tuple(manifest),
        torch.cat(alphas),
        torch.cat(betas),
        raw,
        base_ref,
        metadata=metadata,
    )
    device = state.generator.w_out_t.device
    index = {e.name: i for i, e in enumerate(manifest)}
    # float32 outputs: the fingerprint describes the float32 reconstruction of every tensor.
    for name, t in iter_reconstruct(bundle, base=base, device=device, dtype=torch.float32, verify_base=False):
        if t.is_floating_point():
            bundle.fingerprint[name] = tensor_fingerprint(t, index[name])
    return bundle


def peft_metadata(model: nn.Module) -> dict[str, str]:
    """Bundle metadata naming the module kinds PEFT treats specially, for ``export_bundle``.

    Records the module paths of low-rank targets that are ``nn.Embedding`` or GPT-2-style
    ``Conv1D`` (weight ``(in, out)``, recognised by class name and its ``nf`` attribute).

    Args:
        model: a model after ``compress`` in delta mode with ``rank > 0``.

    Returns:
        ``{PEFT_METADATA_KEY: json}``: pass as ``export_bundle(model, metadata=...)``.

    Raises:
        ModelError: the model is not compressed.
    """
    conv1d, embeddings = [], []
    for e in get_state(model).entries:
        if e.storage != "mcnc" or e.rank == 0:
            continue
        path = e.name.rpartition(".")[0]
        module = model.get_submodule(path)
        if isinstance(module, nn.Embedding):
            embeddings.append(path)
        elif type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == e.shape[-1]:
            conv1d.append(path)
    return {PEFT_METADATA_KEY: json.dumps({"conv1d": conv1d, "embeddings": embeddings}, separators=(",", ":"))}
