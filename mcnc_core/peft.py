"""A delta bundle on low-rank factors as a standard PEFT LoRA adapter, and vLLM's adapter rules.

A delta bundle whose compressed entries have ``rank = r > 0`` stores ``W = W_base + A @ B`` with
``A: (rows, r)`` and ``B: (r, cols)`` (``rows = shape[0]``, ``cols = prod(shape[1:])``). PEFT applies
``lora_B.weight @ lora_A.weight * lora_alpha / r``, so ``lora_B ← A``, ``lora_A ← B`` and
``lora_alpha = r`` (scaling exactly 1) is the same adapter. The export needs no base weights and
no ``peft`` installation: it writes ``adapter_config.json`` and ``adapter_model.safetensors``.

PEFT's forms, by module kind. A bundle does not record module types; ``peft_metadata(model)``
describes them in an ``x-peft-modules`` metadata key (``export_bundle(model, metadata=...)``), which
the export then follows, so a server can export without the model; arguments override it.

===========================  ======================================  =============================
module                       saved tensors                           from the bundle's factors
===========================  ======================================  =============================
``nn.Linear`` (default)      ``lora_A.weight (r, in)``,              ``B``, ``A``
                             ``lora_B.weight (out, r)``
Conv1d/2d/3d (weight ≥ 3-D)  ``lora_A.weight (r, in, *k)``,          ``B`` and ``A`` reshaped
                             ``lora_B.weight (out, r, 1, ...)``
GPT-2 ``Conv1D``             ``lora_A.weight (r, in)``,              ``Aᵀ``, ``Bᵀ``
(``fan_in_fan_out=True``)    ``lora_B.weight (out, r)``
``nn.Embedding``             ``lora_embedding_A (r, num)``,          ``Aᵀ``, ``Bᵀ``
(``embeddings=``)            ``lora_embedding_B (dim, r)``
===========================  ======================================  =============================
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcnc_core.bundle import Bundle
from mcnc_core.decode import decode_factors_as
from mcnc_core.devices import exact_float32
from mcnc_core.errors import ExportError
from mcnc_core.export import PEFT_METADATA_KEY, peft_metadata
from mcnc_core.generator import Generator
from mcnc_core.manifest import TensorEntry
from mcnc_core.safetensors_io import TORCH_TO_DTYPE, build_header, tensor_bytes

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_METADATA_KEY",
    "VLLM_LORA_RANKS",
    "ExportError",
    "check_vllm",
    "export_peft",
    "lora_factors",
    "peft_adapter_files",
    "peft_metadata",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: The ranks vLLM accepts for ``max_lora_rank`` (``vllm/config/lora.py``).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the wrapped model)


def _lora_entry(bundle: Bundle, name: str) -> TensorEntry:
    if bundle.base is None:
        raise ExportError(
            "a full-mode bundle is a whole model, not an adapter: train a delta bundle on low-rank "
            "factors (MCNCConfig(mode='delta', rank=r)) to export a LoRA adapter"
        )
    try:
        e = bundle.entry(name)
    except KeyError:
        raise ExportError(f"the bundle has no tensor {name!r}") from None
    if e.storage != "mcnc" or e.rank == 0:
        what = {"raw": "stored raw", "base": "read from the base"}.get(e.storage, "a full delta (rank 0)")
        raise ExportError(
            f"tensor {name!r} is {what}, not low-rank factors: PEFT LoRA cannot hold it exactly. "
            "Compress with MCNCConfig(rank=r) where r < min(rows, cols) of every target (compress falls "
            "back to rank 0 for tensors too small for r), or exclude the tensor from the targets"
        )
    return e


def _factors(
    bundle: Bundle, e: TensorEntry, gen: Generator, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    # decode_factors_as cuts the decode into the blocks reconstruction uses: the same bits it combines
    # (rounded to ``dtype`` as ``.to(dtype)`` would, inside the output kernel).
    dev = gen.w_out_t.device
    sl = slice(e.chunk_offset, e.chunk_offset + e.chunks)
    with torch.no_grad(), exact_float32():
        a, b = decode_factors_as(gen, bundle.alpha[sl].to(dev), bundle.beta[sl].to(dev), e.factors(), dtype)
    return a, b  # (rows, r), (r, cols)


def lora_factors(bundle: Bundle, name: str, *, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """The low-rank factors of one compressed tensor of a delta bundle.

    ``reconstruct`` computes ``base[name] + (A @ B).reshape(shape)`` from exactly these values.

    Args:
        bundle: a delta bundle.
        name: a manifest entry stored as ``mcnc`` with ``rank = r > 0``.
        device: where to decode (``"cpu"``, ``"cuda"``).

    Returns:
        ``(A, B)``: float32 tensors ``(rows, r)`` and ``(r, cols)`` with ``rows = shape[0]``,
        ``cols = prod(shape[1:])``, on ``device``.

    Raises:
        ExportError: a full-mode bundle, an unknown name, or a tensor that is not low-rank factors.
    """
    e = _lora_entry(bundle, name)
    return _factors(bundle, e, Generator(bundle.spec).to(device))


def _recorded_kinds(bundle: Bundle) -> tuple[list[str], list[str]]:
    raw = bundle.metadata.get(PEFT_METADATA_KEY)
    if raw is None:
        return [], []
    try:
        data = json.loads(raw)
        conv1d, embeddings = list(data["conv1d"]), list(data["embeddings"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"bundle metadata {PEFT_METADATA_KEY!r} is malformed ({exc}): {raw[:200]!r}") from exc
    return [str(p) for p in conv1d], [str(p) for p in embeddings]


_BASE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def _check_path(name: str) -> None:
    """A tensor name PEFT can key: dot-separated identifiers or indices (no ``/``, ``..``, control characters)."""
    if not all(_SEGMENT.fullmatch(seg) for seg in name.split(".")):
        raise ExportError(
            f"tensor name {name!r} is not a module path (dot-separated identifiers or indices, e.g. "
            "'model.layers.0.q_proj.weight'): PEFT adapters key tensors by module path; rename it"
        )


def _put(out: dict[str, Tensor], key: str, value: Tensor) -> None:
    """Add one adapter tensor; an exported key is never written twice (a raw tensor named like a LoRA
    factor would silently replace it)."""
    if key in out:
        raise ExportError(
            f"adapter key {key!r} would be written twice (a raw tensor named like an exported LoRA factor, "
            "or two tensors mapping to one key): rename the raw tensor"
        )
    out[key] = value


def _module_path(name: str) -> str:
    _check_path(name)
    module, _, param = name.rpartition(".")
    if param != "weight" or not module:
        raise ExportError(
            f"tensor {name!r} is not a module's 'weight': PEFT LoRA adapts <module>.weight only; "
            "exclude it from the targets"
        )
    return module


def _modules_to_save(bundle: Bundle, lora_modules: set[str]) -> list[str]:
    """The modules whose every tensor travels raw (PEFT's ``modules_to_save``), outermost first.

    Raises:
        ExportError: a raw tensor whose module also has tensors PEFT does not save (a bias of a
            LoRA-adapted layer, say).
    """
    names = [e.name for e in bundle.manifest]
    raw = {e.name for e in bundle.manifest if e.storage == "raw"}
    covered: list[str] = []
    for n in sorted(raw):
        module = n.rpartition(".")[0]
        if any(module == c or module.startswith(c + ".") for c in covered):
            continue
        others = [m for m in names if m.startswith(module + ".") and m not in raw] if module else names
        if not module or others or module in lora_modules:
            held = others[:3] or [f"{module}.weight (LoRA)"]
            raise ExportError(
                f"raw tensor {n!r} cannot be exported: PEFT saves trained tensors only as whole modules "
                f"(modules_to_save), and module {module or '<root>'!r} also holds {held}. Freeze it (drop "
                "it from MCNCConfig.trainable) or make every tensor of that module trainable"
            )
        covered.append(module)
    return covered


def peft_adapter_files(
    bundle: Bundle,
    *,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    fan_in_fan_out: bool | None = None,
    embeddings: Collection[str] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, bytes]:
    """The PEFT LoRA adapter of a delta bundle as file contents (deterministic bytes).

    Args:
        bundle: a delta bundle whose compressed tensors are all low-rank factors.
        base_model_name_or_path: recorded in the config (a Hub id helps vLLM and LoRAX);
            default: the bundle's base name.
        dtype: dtype of the LoRA factors (``float32`` is exact; raw tensors keep their own dtype).
        fan_in_fan_out: the adapted modules are GPT-2-style ``Conv1D`` (weight ``(in, out)``);
            PEFT has one such flag per adapter, so it applies to every 2-D target. ``None``: true
            when the bundle's ``x-peft-modules`` metadata names Conv1D targets.
        embeddings: module paths of ``nn.Embedding`` targets (PEFT's ``lora_embedding_A/B``);
            ``None``: those the bundle's metadata names.
        device: where to decode the factors.

    Returns:
        ``{"adapter_config.json": ..., "adapter_model.safetensors": ...}``. Keys of the weights
        are ``base_model.model.<module path>.lora_A.weight`` etc., as ``PeftModel.save_pretrained``
        writes them; ``target_modules`` lists full module paths; ``lora_alpha = r`` (per-module
        ranks, if they differ, in ``rank_pattern`` and ``alpha_pattern``).

    Raises:
        ExportError: a full-mode bundle; a rank-0 compressed tensor; a target that is not a
            ``<module>.weight``; a raw tensor PEFT cannot save (see ``modules_to_save``); an
            ``embeddings`` entry that is not a target; Conv1D and Linear targets in one adapter.
    """
    conv1d, recorded_embeddings = _recorded_kinds(bundle)
    embeddings = recorded_embeddings if embeddings is None else embeddings
    if fan_in_fan_out is None:
        fan_in_fan_out = bool(conv1d)
        linear = [e.name for e in bundle.manifest if e.storage == "mcnc" and len(e.shape) == 2]
        linear = [n for n in linear if n.rpartition(".")[0] not in {*conv1d, *embeddings}]
        if conv1d and linear:
            raise ExportError(
                f"targets mix GPT-2 Conv1D modules ({conv1d[:2]}) and Linear ones ({linear[:2]}): PEFT has one "
                "fan_in_fan_out flag per adapter; compress only one kind, or pass fan_in_fan_out explicitly"
            )
    gen: Generator | None = None
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    for e in bundle.manifest:
        if e.storage != "mcnc":
            continue
        _lora_entry(bundle, e.name)
        module = _module_path(e.name)
        gen = gen or Generator(bundle.spec).to(device)
        a, b = _factors(bundle, e, gen, dtype)  # (rows, r), (r, cols), already in ``dtype``
        key = _PREFIX + module
        if module in embeddings:
            _put(tensors, key + ".lora_embedding_A", a.T)
            _put(tensors, key + ".lora_embedding_B", b.T)
        elif fan_in_fan_out and len(e.shape) == 2:  # Conv1D: weight (in, out) = A @ B
            _put(tensors, key + ".lora_A.weight", a.T)
            _put(tensors, key + ".lora_B.weight", b.T)
        else:  # Linear, or ConvNd: lora_A is a conv of the target's kernel, lora_B a 1x1 conv
            _put(tensors, key + ".lora_A.weight", b.reshape(e.rank, *e.shape[1:]))
            _put(tensors, key + ".lora_B.weight", a.reshape(e.shape[0], e.rank, *[1] * (len(e.shape) - 2)))
        ranks[module] = e.rank
    unknown = sorted(set(embeddings) - set(ranks))
    if unknown:
        raise ExportError(f"embeddings {unknown} are not compressed targets of this bundle")
    saved = _modules_to_save(bundle, set(ranks))
    out = {k: v.to(dtype).cpu().contiguous() for k, v in tensors.items()}
    for module in saved:
        for e in bundle.manifest:
            if e.name.startswith(module + "."):
                _check_path(e.name)
                _put(out, _PREFIX + e.name, bundle.raw[e.name].contiguous())
    r = max(ranks.values())
    pattern = {m: k for m, k in sorted(ranks.items()) if k != r}
    assert bundle.base is not None  # _lora_entry refused full mode
    base_name = base_model_name_or_path or bundle.base.name
    if base_name is not None and not _BASE_NAME.fullmatch(base_name):
        raise ExportError(
            f"base name {base_name!r} is not a model id (org/name of letters, digits, '.', '_', '-'): "
            "pass base_model_name_or_path"
        )
    config: dict[str, Any] = {
        "alpha_pattern": pattern,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": r,
        "lora_dropout": 0.0,
        "modules_to_save": saved or None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": pattern,
        "target_modules": sorted(ranks),
        "task_type": bundle.config.task_type,  # recorded by compress (MCNCConfig.task_type)
        "use_dora": False,
        "use_rslora": False,
    }
    metadata = {"format": "pt", "mcnc_base_sha256": bundle.base.sha256}
    return {
        ADAPTER_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        ADAPTER_WEIGHTS: _safetensors_bytes(out, metadata),
    }


def _safetensors_bytes(tensors: Mapping[str, Tensor], metadata: dict[str, str]) -> bytes:
    # Our writer, not safetensors.torch.save: its metadata order varies from call to call, and
    # served files need the same bytes (ETag) every time. Tensors in name order.
    names = sorted(tensors)
    prefix, _ = build_header([(n, TORCH_TO_DTYPE[tensors[n].dtype], tuple(tensors[n].shape)) for n in names], metadata)
    return b"".join([prefix, *(tensor_bytes(tensors[n]) for n in names)])


def export_peft(
    bundle: Bundle,
    out_dir: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    fan_in_fan_out: bool | None = None,
    embeddings: Collection[str] | None = None,
) -> Path:
    """Write a delta bundle as a PEFT LoRA adapter directory (``PeftModel.from_pretrained`` loads it).

    Each file is written atomically (temp file, rename); the directory is created if needed.
    Arguments and errors as for ``peft_adapter_files``; nothing is written when it raises.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    files = peft_adapter_files(
        bundle,
        base_model_name_or_path=base_model_name_or_path,
        dtype=dtype,
        fan_in_fan_out=fan_in_fan_out,
        embeddings=embeddings,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, out / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out


def check_vllm(adapter: str | os.PathLike[str] | Mapping[str, Any], *, max_lora_rank: int = 16) -> list[str]:
    """What keeps vLLM from serving an adapter: one sentence per violated rule (empty: none).

    Rules (``vllm/lora/peft_helper.py``, ``vllm/config/lora.py``): ``max_lora_rank`` is one of
    ``VLLM_LORA_RANKS``; every rank (``r`` and ``rank_pattern``) is at most ``max_lora_rank``
    (smaller ranks are served padded); ``bias == "none"``; no DoRA; no ``modules_to_save``;
    ``r``, ``lora_alpha`` and ``target_modules`` present.

    Args:
        adapter: an adapter directory, the path of its ``adapter_config.json``, or the config dict.
        max_lora_rank: the server's ``--max-lora-rank`` (vLLM's default 16).
    """
    if isinstance(adapter, Mapping):
        config = dict(adapter)
    else:
        path = Path(adapter)
        config = json.loads((path / ADAPTER_CONFIG if path.is_dir() else path).read_text())
    problems = []
    if max_lora_rank not in VLLM_LORA_RANKS:
        problems.append(f"max_lora_rank {max_lora_rank} is not one of vLLM's {list(VLLM_LORA_RANKS)}")
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) is None]
    if missing:
        problems.append(f"adapter_config.json lacks {missing}")
    ranks = {"r": config.get("r")} | {f"rank_pattern[{k!r}]": v for k, v in (config.get("rank_pattern") or {}).items()}
    for where, r in ranks.items():
        if r is not None and r > max_lora_rank:
            fits = [k for k in VLLM_LORA_RANKS if k >= r]
            fix = f"start vLLM with --max-lora-rank {fits[0]}" if fits else f"vLLM's largest is {VLLM_LORA_RANKS[-1]}"
            problems.append(f"{where} = {r} exceeds max_lora_rank {max_lora_rank}: {fix}")
    if config.get("bias", "none") != "none":
        problems.append(f"bias = {config['bias']!r}: vLLM serves LoRA without bias only")
    if config.get("use_dora"):
        problems.append("use_dora = true: vLLM does not serve DoRA adapters")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save = {config['modules_to_save']}: vLLM does not load fully trained modules; "
            "freeze them (MCNCConfig.trainable=()) or serve the adapter with peft"
        )
    return problems
