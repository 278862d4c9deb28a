"""``compress(model, config)`` in place, ``materialize(model)``, and ``base_state_dict(model)``."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mcnc_core.config import MCNCConfig, infer_task_type
from mcnc_core.errors import ConfigError, ModelError
from mcnc_core.fingerprint import state_digest
from mcnc_core.generator import Generator
from mcnc_core.layers import PREFIX, ManifoldWeight, adapter_kind, add_adapter_output, regenerate_weights
from mcnc_core.manifest import FLOAT_DTYPES, TensorEntry
from mcnc_core.safetensors_io import TORCH_TO_DTYPE

__all__ = ["MCNCState", "base_state_dict", "compress", "get_state", "materialize"]

DEFAULT_TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


@dataclass
class MCNCState:
    """What ``compress`` recorded on the model (``model._mcnc_state``; not a module, not saved)."""

    config: MCNCConfig
    generator: Generator
    entries: list[TensorEntry]  # every state_dict key, original order; chunk offsets unset
    targets: dict[str, ManifoldWeight]
    base_digest: str | None = None
    hooks: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)


def get_state(model: nn.Module) -> MCNCState:
    """The model's MCNC state. Raises ``ModelError`` if ``compress`` was not called on it."""
    state = getattr(model, "_mcnc_state", None)
    if not isinstance(state, MCNCState):
        raise ModelError(f"{type(model).__name__} is not compressed: call mcnc_core.compress(model, config) first")
    return state


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _select_targets(model: nn.Module, cfg: MCNCConfig) -> list[str]:
    params = dict(model.named_parameters(remove_duplicate=False))
    if cfg.targets is None:
        names = [
            f"{mname}.weight" if mname else "weight"
            for mname, m in model.named_modules()
            if isinstance(m, DEFAULT_TARGET_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter)
        ]
    else:
        names = [n for n in params if _matches(n, cfg.targets)]
    out = []
    for n in names:
        p = params[n]
        if _matches(n, cfg.exclude) or not p.is_floating_point() or p.numel() < cfg.effective_min_numel:
            continue
        out.append(n)
    return out


def compress(model: nn.Module, config: MCNCConfig) -> nn.Module:
    """Reparameterise ``model``'s selected weights on the MCNC manifold, in place.

    Each selected parameter ``module.w`` is replaced by a ``ManifoldWeight`` child
    ``module.mcnc_w`` holding trainable ``alpha``/``beta``; a forward pre-hook regenerates
    ``module.w`` (a plain tensor) before every forward. Afterwards only codes and raw
    parameters require grad; the shared generator sits in non-persistent buffers.

    Full mode: targeted weights start as ``beta * phi(alpha)`` with each layer's current RMS
    (a freshly built model's default init). Delta mode: targets become ``base + delta`` with
    ``delta = 0`` at start; other parameters are frozen unless they match ``config.trainable``.
    Delta mode with ``rank > 0`` on a linear layer (``nn.Linear`` or a subclass, GPT-2's
    ``Conv1D``) trains at adapter cost: the module keeps its frozen base weight, untouched, and a
    forward hook adds ``x Bᵀ Aᵀ`` with the factors generated from the codes (as LoRA does); the
    full delta is never built during training. Other targets rebuild their weight before each
    forward. Initial codes come from ``mcnc_core.prng`` (``config.init_seed``), the same everywhere.

    Args:
        model: any ``nn.Module``; not already compressed.
        config: the compression config; a ``task_type`` of ``None`` is inferred from the model's
            class (``infer_task_type``: ``CAUSAL_LM`` for ``*ForCausalLM``) and recorded.

    Returns:
        ``model`` itself.

    Raises:
        ModelError: already compressed, nothing to compress, or a target is a shared parameter.
        ConfigError: ``rank > 0`` and a target has fewer than 2 dims (named).
    """
    if getattr(model, "_mcnc_state", None) is not None:
        raise ModelError("model is already compressed; compress a fresh model or materialize() it first")
    if config.task_type is None and (task := infer_task_type(model)) is not None:
        config = dataclasses.replace(config, task_type=task)  # recorded in the bundle's config
    targets = _select_targets(model, config)
    if not targets:
        raise ModelError(
            f"nothing to compress: no floating-point parameter of >= {config.effective_min_numel} elements "
            f"matches targets={config.targets!r} (exclude={config.exclude!r})"
        )
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    for names in names_of.values():
        if len(names) > 1 and any(n in targets for n in names):
            raise ModelError(f"parameters {names} are one shared tensor; shared weights cannot be targets")

    sd = model.state_dict(keep_vars=True)
    params = dict(model.named_parameters(remove_duplicate=False))
    device = next(iter(sd.values())).device
    gen = Generator(config.generator_spec()).to(device)
    delta = config.mode == "delta"

    entries: list[TensorEntry] = []
    base_tensors: dict[str, Tensor] = {}
    for name, t in sd.items():
        dtype = TORCH_TO_DTYPE.get(t.dtype)
        if dtype is None:
            raise ModelError(f"tensor {name!r} has dtype {t.dtype}, which bundles cannot store")
        if name in targets:
            if dtype not in FLOAT_DTYPES:  # pragma: no cover - filtered by _select_targets
                raise ModelError(f"target {name!r} is not floating point")
            if config.rank and t.dim() < 2:
                raise ConfigError(
                    f"target {name!r} has shape {list(t.shape)}: rank {config.rank} factors need a tensor of "
                    ">= 2 dims; exclude it (MCNCConfig.exclude) or use rank=0"
                )
            entries.append(TensorEntry(name, tuple(t.shape), dtype, "mcnc", config.rank))
            if delta:
                base_tensors[name] = t.detach()
        elif not delta or name not in params or _matches(name, config.trainable):
            entries.append(TensorEntry(name, tuple(t.shape), dtype, "raw"))
        else:
            entries.append(TensorEntry(name, tuple(t.shape), dtype, "base"))
            base_tensors[name] = t.detach()

    state = MCNCState(config, gen, entries, {})
    if delta:
        state.base_digest = state_digest(base_tensors)
        for name, p in params.items():
            p.requires_grad_(_matches(name, config.trainable))

    modules = dict(model.named_modules())
    # v2 codes start in a fixed range (L is the generator's frequency); v1 in [-L, L].
    alpha_range = config.alpha_init * (config.bound if config.generator_version == 1 else 1.0)
    for stream, entry in enumerate(e for e in entries if e.storage == "mcnc"):
        mname, _, pname = entry.name.rpartition(".")
        module = modules[mname]
        param = params[entry.name]
        # A delta on the factors of a linear layer trains the way LoRA does (base(x) + x Bᵀ Aᵀ):
        # the base weight stays in the module, untouched, and no full-size tensor is built per step.
        adapter = adapter_kind(module, pname) if delta and entry.rank else None
        base = param.detach() if delta and adapter is None else None
        mw = ManifoldWeight(gen, entry.shape, entry.rank, base, adapter)
        w = param.detach().float()
        rms = float(w.pow(2).mean().sqrt()) if w.numel() else 0.0
        mw.reset_codes(rms, zero_last=delta, alpha_range=alpha_range, seed=config.init_seed, stream=stream)
        mw.out_dtype = param.dtype
        if adapter is not None:
            if not hasattr(module, "_mcnc_adapter_hook"):
                module._mcnc_adapter_hook = True
                state.hooks.append(module.register_forward_hook(add_adapter_output))
            module.add_module(PREFIX + pname, mw)
            state.targets[entry.name] = mw
            continue
        if not hasattr(module, "_mcnc_param_order"):
            # materialize() restores this order, so state_dict keys come back in their original order.
            module._mcnc_param_order = list(module._parameters)
            state.hooks.append(module.register_forward_pre_hook(regenerate_weights))
        del module._parameters[pname]
        module.add_module(PREFIX + pname, mw)
        state.targets[entry.name] = mw
        with torch.no_grad():
            setattr(module, pname, mw().to(param.dtype))
    model._mcnc_state = state
    return model


def base_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Delta mode: the base tensors the bundle reads (targets' bases and frozen tensors).

    This is what a server registers as the base (``save_file(base_state_dict(m), path)``);
    its ``state_digest`` is the bundle's ``base.sha256``.

    Raises:
        ModelError: if the model is not compressed in delta mode.
    """
    state = get_state(model)
    if state.config.mode != "delta":
        raise ModelError("base_state_dict() is only defined for delta mode")
    sd = model.state_dict()
    out: dict[str, Tensor] = {}
    for e in state.entries:
        if e.storage == "mcnc":
            base = state.targets[e.name].base
            # Adapter-mode targets keep their base in the module: it is the model's own tensor.
            out[e.name] = base.detach() if base is not None else sd[e.name].detach()
        elif e.storage == "base":
            out[e.name] = sd[e.name].detach()
    return out


@torch.no_grad()
def materialize(model: nn.Module) -> nn.Module:
    """Bake the generated weights back into plain ``nn.Parameter``s and undo ``compress``.

    Afterwards the model is an ordinary model (no codes, no hooks, no generator) whose
    ``state_dict()`` has the original keys; every parameter requires grad again.

    Raises:
        ModelError: if the model is not compressed.
    """
    state = get_state(model)
    for handle in state.hooks:
        handle.remove()
    modules = dict(model.named_modules())
    for name, mw in state.targets.items():
        mname, _, pname = name.rpartition(".")
        module = modules[mname]
        w = mw(getattr(module, pname) if mw.adapter else None).to(mw.out_dtype)
        delattr(module, PREFIX + pname)
        module.__dict__.pop(pname, None)
        module.register_parameter(pname, nn.Parameter(w))
    for module in modules.values():
        module.__dict__.pop("_mcnc_adapter_hook", None)
        order = module.__dict__.pop("_mcnc_param_order", None)
        if order is not None:
            module._parameters = {k: module._parameters[k] for k in order}
    for p in model.parameters():
        p.requires_grad_(True)
    del model._mcnc_state
    return model
