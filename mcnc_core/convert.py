"""``convert_peft``: turn a trained PEFT LoRA adapter into a delta bundle by distillation.

The teacher is the base model with the adapter applied (PEFT's forward, added with hooks:
``mcnc_core.peft_reader``); the student is a copy of the base compressed in delta mode on the
adapter's target modules, trained to reproduce the teacher's outputs on unlabeled inputs (logit KL
for models with logits, output MSE otherwise). The base itself is left as it was (its tensors,
hooks and ``requires_grad`` flags), and the bundle references it by digest like any delta.
Optionally the codes are first fitted to the adapter's weight change (``warm_start``), which costs
no forward passes.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mcnc_core.compress import compress, get_state
from mcnc_core.config import MCNCConfig
from mcnc_core.decode import decode_factors
from mcnc_core.errors import AdapterError, ConfigError
from mcnc_core.manifest import factor_shapes
from mcnc_core.peft_reader import LoraAdapter, peft_forward_hooks, read_lora_adapter
from mcnc_core.recipe import param_groups

__all__ = ["CONVERT_METADATA_KEY", "budget_config", "convert_peft"]

#: Bundle metadata: JSON ``{"adapter_numbers", "steps", "loss", "gap_start", "gap_end", ...}``.
CONVERT_METADATA_KEY = "x-mcnc-convert"
Loss = Literal["auto", "kl", "mse"]
Batch = Tensor | Mapping[str, Tensor]


def _stored(sizes: list[int], k: int, d: int) -> int:
    return (k + 1) * sum(-(-s // d) for s in sizes)


def budget_config(config: MCNCConfig, factor_sizes: list[int], budget: int, *, raw_numbers: int = 0) -> MCNCConfig:
    """``config`` with ``chunk_size`` (and, when it must, a smaller ``k``) set so the codes and scales
    of factors of ``factor_sizes`` numbers, plus ``raw_numbers`` stored raw, come to at most ``budget``.

    Each factor starts on a fresh chunk: ``stored = (k + 1) * Σ ceil(size / chunk_size) + raw``. The
    smallest ``chunk_size`` that fits is taken (the most chunks, the closest to ``budget``). ``k``
    is kept unless even one chunk per factor does not fit; then the largest ``k`` that fits.

    Raises:
        ConfigError: ``budget`` is below the smallest possible count (named), or not a positive int.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"budget must be a positive int (stored numbers), got {budget!r}")
    codes = budget - raw_numbers
    d_max = min(max(factor_sizes), 2**20)
    for k in range(config.k, 0, -1):
        if _stored(factor_sizes, k, d_max) > codes:
            continue
        lo, hi = 2, d_max  # stored(d) does not increase with d: the smallest d that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if _stored(factor_sizes, k, mid) <= codes:
                hi = mid
            else:
                lo = mid + 1
        return dataclasses.replace(config, k=k, chunk_size=lo)
    least = _stored(factor_sizes, 1, d_max) + raw_numbers
    raise ConfigError(
        f"budget {budget:,} is below the smallest bundle for these targets: {least:,} stored numbers "
        f"({len(factor_sizes)} factors at one chunk of k=1 each, plus {raw_numbers:,} raw); raise the budget"
    )


def _student_config(
    config: MCNCConfig | None, base: nn.Module, adapter: LoraAdapter, budget: int | None
) -> tuple[MCNCConfig, list[str]]:
    config = config or MCNCConfig(mode="delta")
    rank = config.rank or adapter.rank
    targets = [f"{path}.weight" for path in adapter.modules]
    trainable = tuple(f"{m}.*" for m in adapter.saved_modules)
    config = dataclasses.replace(config, mode="delta", rank=rank, targets=tuple(targets), trainable=trainable,
                                 min_numel=1)  # fmt: skip
    if budget is not None:
        params = dict(base.named_parameters())
        sizes = [math.prod(f) for t in targets for f in factor_shapes(tuple(params[t].shape), rank)]
        raw = sum(t.numel() for t in adapter.saved.values())
        config = budget_config(config, sizes, budget, raw_numbers=raw)
    return config, targets


def _output(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise AdapterError(f"cannot read a tensor from the model's output ({type(out).__name__}); pass loss='mse' "
                       "with a model that returns a tensor, logits or last_hidden_state")  # fmt: skip


def _call(model: nn.Module, batch: Batch) -> tuple[Tensor, bool]:
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    return _output(out), isinstance(getattr(out, "logits", None), Tensor)


def _gap(student: Tensor, teacher: Tensor, loss: str, mask: Tensor | None) -> Tensor:
    """Mean KL(teacher || student) per position, or mean squared error; ``mask`` (1 = counted) over
    the leading dims (``attention_mask``: batch x tokens) when its shape fits the output's."""
    s, t = student.float(), teacher.float()
    fits = mask is not None and tuple(s.shape[: mask.dim()]) == tuple(mask.shape) and s.dim() > mask.dim()
    if loss == "kl":
        per = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
        fits = fits and per.dim() == mask.dim()  # type: ignore[union-attr]
    else:
        per = (s - t).pow(2)
        if not fits:
            return per.mean()
        per = per.flatten(mask.dim()).mean(-1)  # type: ignore[union-attr]
    if not fits:
        return per.mean()
    m = mask.to(per.dtype)  # type: ignore[union-attr]
    return (per * m).sum() / m.sum().clamp_min(1)


def _to(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return batch.to(device)


def _warm_start(student: nn.Module, adapter: LoraAdapter, steps: int, lr: float) -> float:
    """Fit the codes to the adapter's weight changes (relative Frobenius error, summed over targets).

    ``||AB - PQ||² = tr(AᵀA·BBᵀ) - 2 tr(AᵀP·QBᵀ) + ||PQ||²`` uses r x r products only: no full-size
    matrix is built. Returns the final mean relative error.
    """
    state = get_state(student)
    dev = state.generator.w_out_t.device
    pairs = []
    for path, lm in adapter.modules.items():
        p, q = (x.to(dev) for x in lm.weight_factors())
        norm = float(torch.sum((p.T @ p) * (q @ q.T))) or 1.0
        pairs.append((state.targets[f"{path}.weight"], p, q, norm))
    groups = param_groups(student, lr)
    opt = torch.optim.Adam([g for g in groups if g["name"] != "raw"])
    err = torch.zeros(())
    for _ in range(steps):
        err = torch.zeros((), device=dev)
        for mw, p, q, norm in pairs:
            a, b = decode_factors(mw.generator, mw.alpha, mw.beta, mw.factors)
            sq = torch.sum((a.T @ a) * (b @ b.T)) - 2 * torch.sum((a.T @ p) * (q @ b.T)) + norm
            err = err + sq / norm
        opt.zero_grad(set_to_none=True)
        (err / len(pairs)).backward()
        opt.step()
    return float(err) / len(pairs)


def _batches(batches: Iterable[Batch]) -> list[Batch]:
    out = list(batches)
    if not out:
        raise ConfigError("batches is empty: pass at least one batch of inputs")
    return out


def convert_peft(
    base: nn.Module,
    adapter_dir: str | os.PathLike[str],
    batches: Iterable[Batch],
    config: MCNCConfig | None = None,
    *,
    steps: int,
    lr: float | None = None,
    loss: Loss = "auto",
    budget: int | None = None,
    warm_start: int = 0,
    progress: bool | None = None,
) -> Any:
    """Distil a PEFT LoRA adapter into a delta bundle of ``base`` (``base`` is not changed).

    Args:
        base: the model the adapter was trained on, as ``PeftModel`` wrapped it (any device/dtype).
        adapter_dir: a PEFT LoRA adapter directory (``adapter_config.json`` and
            ``adapter_model.safetensors``; ``peft`` itself is not needed).
        batches: unlabeled inputs, each a tensor (``model(batch)``) or a mapping of keyword
            arguments (``model(**batch)``, e.g. ``input_ids`` and ``attention_mask``, whose zeros
            are left out of the loss). Cycled for ``steps``; an iterator is read once into a list.
        config: the code settings (``k``, ``chunk_size``, generator, seeds, ``base_name``). The
            conversion sets ``mode="delta"``, ``targets`` (the adapter's modules), ``trainable``
            (its ``modules_to_save``), ``min_numel=1``, and ``rank`` to the adapter's rank when
            ``config.rank`` is 0. ``None``: ``MCNCConfig()``'s defaults.
        steps: Adam steps of distillation (cosine decay, 5 % warm-up).
        lr: code learning rate; ``None``: ``param_groups``' recommended delta-mode rate.
        loss: ``"kl"`` (KL from the teacher's to the student's softmax over the last dim, per
            position), ``"mse"`` (mean squared difference of the outputs) or ``"auto"``: ``"kl"``
            when the model's output has ``logits``, else ``"mse"``.
        budget: stored numbers the bundle may hold (codes, scales and ``modules_to_save``):
            ``chunk_size`` (and ``k`` if needed) are picked with ``budget_config``.
        warm_start: steps of fitting the codes to the adapter's weight change before distilling.
        progress: show a tqdm bar with the step and the teacher-student gap (``None``: when
            stderr is a terminal).

    Returns:
        The ``Bundle`` (``export_bundle`` of the student), with ``x-peft-modules`` and
        ``x-mcnc-convert`` metadata (adapter size, steps, loss, the gap at start and end, seconds).

    Raises:
        AdapterError: the adapter cannot be converted (DoRA, bias, a module kind, files; named).
        ConfigError: ``steps``, ``budget``, ``loss`` or ``batches`` is invalid.
    """
    from tqdm.auto import tqdm

    from mcnc_core import export_bundle
    from mcnc_core.peft import peft_metadata

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a non-negative int, got {steps!r}")
    if loss not in ("auto", "kl", "mse"):
        raise ConfigError(f"loss must be 'auto', 'kl' or 'mse', got {loss!r}")
    t0 = time.perf_counter()
    adapter = read_lora_adapter(adapter_dir, base)
    data = _batches(batches)
    cfg, _ = _student_config(config, base, adapter, budget)
    device = next(base.parameters()).device

    was_training = base.training
    student = copy.deepcopy(base).eval()  # eval: no dropout in teacher or student
    student.load_state_dict(adapter.saved, strict=False)  # modules_to_save start where the adapter left them
    compress(student, cfg)
    groups = param_groups(student, lr)
    warm_error = _warm_start(student, adapter, warm_start, groups[0]["lr"]) if warm_start else None
    opt = torch.optim.Adam(groups)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
    )

    handles = peft_forward_hooks(base, adapter)
    base.eval()
    gaps: list[float] = []
    try:
        kind = loss
        bar = tqdm(total=steps, desc="convert", unit="step", disable=None if progress is None else not progress)
        for i, batch in zip(range(steps), itertools.cycle(data)):
            batch = _to(batch, device)
            with torch.no_grad():
                target, has_logits = _call(base, batch)
            if kind == "auto":
                kind = "kl" if has_logits else "mse"
            out, _ = _call(student, batch)
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            gap = _gap(out, target, kind, mask)
            opt.zero_grad(set_to_none=True)
            gap.backward()
            opt.step()
            sched.step()
            gaps.append(gap.item())
            bar.update(1)
            if i % 10 == 0 or i == steps - 1:
                bar.set_postfix(gap=f"{gaps[-1]:.4g}", start=f"{gaps[0]:.4g}")
        bar.close()
    finally:
        for h in handles:
            h.remove()
        base.train(was_training)

    window = max(1, min(10, len(gaps) // 10))
    info = {
        "adapter_numbers": adapter.stored_numbers,
        "adapter_rank": adapter.rank,
        "steps": steps,
        "loss": kind if gaps else loss,
        "warm_start": warm_start,
        "warm_start_error": warm_error,
        "gap_start": gaps[0] if gaps else None,
        "gap_end": sum(gaps[-window:]) / window if gaps else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    metadata = {**peft_metadata(student), CONVERT_METADATA_KEY: json.dumps(info, separators=(",", ":"))}
    return export_bundle(student, metadata=metadata)
