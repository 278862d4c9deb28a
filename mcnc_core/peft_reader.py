"""Read a PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) against a model.

No ``peft`` installation is needed: the files are JSON and safetensors. ``read_lora_adapter``
checks every tensor against the model it will be applied to and returns, per adapted module, the
low-rank form of its weight change ``ΔW = P @ Q`` in the weight's own layout (``P: (rows, r)``,
``Q: (r, cols)``, the layout ``MCNCConfig(rank=r)`` factors a weight into) and the forward form
PEFT computes. What PEFT adds, by module kind (``s = lora_alpha / r``, or ``lora_alpha / sqrt(r)``
with ``use_rslora``; per-module values from ``rank_pattern`` / ``alpha_pattern``):

==========================  ==========================================  ===========================
module (weight)             PEFT forward                                ``ΔW = P @ Q``
==========================  ==========================================  ===========================
``nn.Linear`` (out, in)     ``y += s · lora_B(lora_A(x))``              ``P = s·lora_B, Q = lora_A``
GPT-2 ``Conv1D`` (in, out)  ``y += s · lora_B(lora_A(x))``              ``P = lora_Aᵀ, Q = s·lora_Bᵀ``
``nn.Embedding`` (n, dim)   ``y += s · emb(x, lora_embedding_Aᵀ) Bᵀ``   ``P = Aᵀ, Q = s·Bᵀ``
==========================  ==========================================  ===========================

Anything else raises ``AdapterError`` naming it: DoRA (``use_dora``, ``lora_magnitude_vector``),
trained biases (``bias != "none"``, ``lora_bias``), other PEFT types, other module kinds
(convolutions, quantized layers), pickled weights (``adapter_model.bin``), tensors whose shapes do
not fit the model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mcnc_core.errors import AdapterError

__all__ = ["LoraAdapter", "LoraModule", "peft_forward_hooks", "read_adapter_config", "read_lora_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the wrapped model)
_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)")
ModuleKind = Literal["linear", "conv1d", "embedding"]


@dataclass
class LoraModule:
    """One adapted module: the two saved factors, the scale, and the module kind.

    ``down``/``up`` are the saved tensors as they are (``lora_A``/``lora_B`` or
    ``lora_embedding_A``/``lora_embedding_B``), in their saved dtype.
    """

    path: str
    kind: ModuleKind
    down: Tensor  # lora_A.weight (r, in) or lora_embedding_A (r, num)
    up: Tensor  # lora_B.weight (out, r) or lora_embedding_B (dim, r)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def numel(self) -> int:
        return self.down.numel() + self.up.numel()

    def weight_factors(self) -> tuple[Tensor, Tensor]:
        """``(P, Q)`` float32 with ``P @ Q`` = the change of the module's weight, in its layout."""
        a, b = self.down.float(), self.up.float()
        if self.kind == "linear":  # weight (out, in) += s · B A
            return self.scale * b, a
        return a.T, self.scale * b.T  # Conv1D weight (in, out), Embedding (num, dim): (s · B A)ᵀ

    def output(self, x: Tensor) -> Tensor:
        """What PEFT adds to the module's output for input ``x`` (factors cast to ``x``'s dtype)."""
        if self.kind == "embedding":
            return F.embedding(x, self.down.T.to(self.up.dtype)) @ self.up.T * self.scale
        return F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype)) * self.scale


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read against a model: its modules, ``modules_to_save`` tensors, config."""

    modules: dict[str, LoraModule]  # module path -> factors
    saved: dict[str, Tensor]  # parameter name -> tensor, for PEFT's modules_to_save
    saved_modules: list[str]
    config: dict[str, Any]

    @property
    def rank(self) -> int:
        """The largest rank of the adapter's modules."""
        return max(m.rank for m in self.modules.values())

    @property
    def stored_numbers(self) -> int:
        """Numbers the adapter stores: every factor and every ``modules_to_save`` tensor."""
        return sum(m.numel for m in self.modules.values()) + sum(t.numel() for t in self.saved.values())


def _pattern_value(pattern: dict[str, Any], path: str, default: Any) -> Any:
    # PEFT's rule (tuners_utils.get_pattern_key): a key matches a module name ending with it.
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _kind(model: nn.Module, path: str) -> tuple[ModuleKind, nn.Module]:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(
            f"the adapter adapts module {path!r}, which the base model ({type(model).__name__}) does not have: "
            "load the base the adapter was trained on (the same architecture and class)"
        ) from None
    if isinstance(module, nn.Embedding):
        return "embedding", module
    if type(module) is nn.Linear or (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward):
        return "linear", module
    if type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == module.weight.shape[1]:
        return "conv1d", module
    raise AdapterError(
        f"module {path!r} is a {type(module).__name__}: converting LoRA on it is not supported (supported: "
        "nn.Linear, GPT-2 Conv1D, nn.Embedding); drop it from the adapter's target_modules"
    )


def _check_config(config: dict[str, Any], where: Path) -> None:
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterError(f"{where}: peft_type {peft_type!r} is not LoRA; only LoRA adapters can be converted")
    if config.get("use_dora"):
        raise AdapterError(
            f"{where}: use_dora is true: a DoRA adapter rescales each weight column by a trained magnitude, "
            "which a low-rank delta cannot hold; convert a plain LoRA adapter"
        )
    if config.get("bias", "none") != "none":
        raise AdapterError(
            f"{where}: bias={config['bias']!r}: the adapter trains biases, which a converted bundle would drop; "
            "only bias='none' adapters can be converted"
        )
    if config.get("lora_bias"):
        raise AdapterError(f"{where}: lora_bias is true (a trained bias on lora_B); only lora_bias=false is supported")
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise AdapterError(f"{where}: {key} must be a positive number, got {value!r}")


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``adapter_config.json`` of a PEFT LoRA adapter, checked (no tensors read, no model needed).

    Raises:
        AdapterError: a missing or pickled file, DoRA, trained biases, another PEFT type.
    """
    where = Path(adapter_dir)
    if not (where / ADAPTER_WEIGHTS).is_file():
        if (where / "adapter_model.bin").is_file():
            raise AdapterError(
                f"{where}: adapter_model.bin is a pickle, which mcnc never loads; re-save the adapter with "
                "PeftModel.save_pretrained(..., safe_serialization=True)"
            )
        raise AdapterError(f"{where}: no {ADAPTER_WEIGHTS} (is this a PEFT adapter directory?)")
    try:
        config = json.loads((where / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterError(f"{where}: no {ADAPTER_CONFIG} (is this a PEFT adapter directory?)") from None
    except ValueError as exc:
        raise AdapterError(f"{where / ADAPTER_CONFIG}: not JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterError(f"{where / ADAPTER_CONFIG}: expected a JSON object, got {type(config).__name__}")
    _check_config(config, where)
    return config


def read_lora_adapter(adapter_dir: str | os.PathLike[str], model: nn.Module) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory and check it against ``model`` (which is not changed).

    Args:
        adapter_dir: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``, as
            ``PeftModel.save_pretrained`` writes it.
        model: the base model the adapter was trained on (the class ``PeftModel`` wrapped).

    Returns:
        The adapter's modules (``weight_factors`` in the weight's layout), ``modules_to_save``
        tensors keyed by the model's parameter names, and the config.

    Raises:
        AdapterError: a missing or pickled file, DoRA, trained biases, another PEFT type, a module
            kind that cannot be converted, or a tensor that does not fit the model (each named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = Path(adapter_dir)
    weights_path = where / ADAPTER_WEIGHTS
    config = read_adapter_config(where)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{weights_path}: not a readable safetensors file ({exc})") from exc

    parts: dict[str, dict[str, Tensor]] = {}
    saved: dict[str, Tensor] = {}
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, t in tensors.items():
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        if "lora_magnitude_vector" in name:
            raise AdapterError(f"{where}: tensor {key!r} is a DoRA magnitude; DoRA adapters cannot be converted")
        m = _LORA_KEY.fullmatch(name)
        if m:
            parts.setdefault(m["module"], {})[m["part"]] = t
        elif "lora_" in name:
            raise AdapterError(f"{where}: tensor {key!r} is not a LoRA factor this converter knows (a bias? DoRA?)")
        elif name in params:
            if tuple(params[name].shape) != tuple(t.shape):
                raise AdapterError(
                    f"{where}: {key!r} has shape {list(t.shape)}, the model's {list(params[name].shape)}"
                )
            saved[name] = t
        else:
            raise AdapterError(f"{where}: tensor {key!r} is neither a LoRA factor nor a tensor of the base model")
    if not parts:
        raise AdapterError(f"{where}: the adapter has no LoRA factors")

    r0, alpha0 = config["r"], config["lora_alpha"]
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    modules: dict[str, LoraModule] = {}
    for path, p in sorted(parts.items()):
        kind, module = _kind(model, path)
        want = ("lora_embedding_A", "lora_embedding_B") if kind == "embedding" else ("lora_A.weight", "lora_B.weight")
        if set(p) != set(want):
            raise AdapterError(f"{where}: module {path!r} ({kind}) has tensors {sorted(p)}, expected {list(want)}")
        down, up = p[want[0]], p[want[1]]
        w = module.weight
        n_in, n_out = (w.shape[1], w.shape[0]) if kind == "linear" else (w.shape[0], w.shape[1])
        r = down.shape[0] if down.dim() == 2 else -1
        if down.shape != (r, n_in) or up.shape != (n_out, r):
            raise AdapterError(
                f"{where}: module {path!r} expects factors ({r}, {n_in}) and ({n_out}, {r}), got "
                f"{list(down.shape)} and {list(up.shape)}"
            )
        if r != _pattern_value(ranks, path, r0):
            raise AdapterError(
                f"{where}: module {path!r} has rank {r}, its config says {_pattern_value(ranks, path, r0)}"
            )
        alpha = float(_pattern_value(alphas, path, alpha0))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        modules[path] = LoraModule(path, kind, down, up, scale)

    saved_modules = list(config.get("modules_to_save") or [])
    for name in saved:
        if not any(name.startswith(_saved_module(m, params) + ".") for m in saved_modules):
            raise AdapterError(f"{where}: tensor {name!r} is not in a module listed in modules_to_save {saved_modules}")
    return LoraAdapter(modules, saved, sorted({n.rpartition(".")[0] for n in saved}), config)


def _saved_module(entry: str, params: dict[str, Any]) -> str:
    # modules_to_save holds names ("classifier") or full paths; return the full path holding tensors.
    for name in params:
        module = name.rpartition(".")[0]
        if module == entry or module.endswith("." + entry):
            return module
    return entry


def peft_forward_hooks(model: nn.Module, adapter: LoraAdapter) -> list[torch.utils.hooks.RemovableHandle]:
    """Add ``adapter`` to ``model``'s forward with hooks (the model's tensors are not touched).

    LoRA modules add ``LoraModule.output(x)``; a ``modules_to_save`` module's output is replaced by
    that of a copy holding the saved tensors. Remove the returned handles to undo.
    """
    import copy

    handles = []
    for path, lm in adapter.modules.items():

        def add(module: nn.Module, args: tuple[Any, ...], out: Tensor, lm: LoraModule = lm) -> Tensor:
            return out + lm.output(args[0]).to(out.dtype)

        handles.append(model.get_submodule(path).register_forward_hook(add))
    for path in adapter.saved_modules:
        original = model.get_submodule(path)
        replacement = copy.deepcopy(original)
        own = {n[len(path) + 1 :]: t for n, t in adapter.saved.items() if n.startswith(path + ".")}
        replacement.load_state_dict(own, strict=False)
        replacement.requires_grad_(False)

        def swap(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, rep: nn.Module = replacement
        ) -> Any:
            return rep(*args, **kwargs)

        handles.append(original.register_forward_hook(swap, with_kwargs=True))
    return handles
