"""Local reconstruction through ``mcnc_core``; imported lazily so ``import client`` needs no torch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client._exceptions import (
    AdapterExportError,
    BaseMismatchError,
    IntegrityError,
    InvalidArgumentError,
    StateDictMismatchError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import Tensor, nn

__all__ = [
    "LoadPlan",
    "check_given_base",
    "export_adapter",
    "given_base",
    "plan_load",
    "reconstruct_local",
    "state_digest_file",
    "verify_weights_file",
    "weights_layout",
]

_DTYPES = {"float32", "float16", "bfloat16"}


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InvalidArgumentError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return getattr(torch, dtype)


Layout = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (safetensors dtype, shape)


@dataclass(frozen=True)
class LoadPlan:
    """What ``load`` learned from a cached bundle before it downloads or allocates anything else.

    Attributes:
        needed: bytes the reconstruction will allocate (checked against what it may use).
        base: a delta's base digest and the exact tensors its file must hold; ``None`` in full mode.
    """

    needed: int
    base_digest: str | None
    base: Layout | None


def _peak_decode_bytes(bundle: Any, dtype: Any = None) -> int:
    """What the decode of the bundle's largest tensor allocates at once, low-rank factors included:
    the server's own count (``mcnc_core.peak_decode_bytes``). It counts that tensor's output (and
    base) once more than ``plan_load`` already does: conservative by one tensor."""
    import mcnc_core

    return int(mcnc_core.peak_decode_bytes(bundle, dtype))


def plan_load(
    bundle_path: Path, *, device: str, dtype: Any, into_model: bool, given_base: bool, limit: int | None
) -> LoadPlan:
    """Check that reconstructing a cached bundle fits in memory, before anything is allocated.

    Counted: the outputs at their dtype (none when decoding straight into ``model``'s tensors),
    a cached base read from disk, and the decode's peak (``mcnc_core.peak_decode_bytes``).

    Raises:
        InsufficientMemoryError: more than ``limit`` (``MCNC_MAX_LOAD_BYTES``), else than this
            process can get now, naming both figures.
        InvalidArgumentError: an unknown ``dtype``.
    """
    import mcnc_core
    from client._memory import check_fits
    from mcnc_core.reconstruct import base_names, output_dtype
    from mcnc_core.safetensors_io import ITEMSIZE, TORCH_TO_DTYPE

    bundle = mcnc_core.load_bundle(bundle_path)
    want = _torch_dtype(dtype)
    outputs = 0 if into_model else sum(
        e.numel * ITEMSIZE[TORCH_TO_DTYPE[output_dtype(e, want)]] for e in bundle.manifest
    )  # fmt: skip
    layout = None
    if bundle.base is not None and not given_base:
        layout = {n: (bundle.entry(n).dtype, bundle.entry(n).shape) for n in base_names(bundle)}
    base = sum(math.prod(shape) * ITEMSIZE[dt] for dt, shape in layout.values()) if layout else 0
    needed = outputs + base + _peak_decode_bytes(bundle, want)
    check_fits(f"reconstructing {bundle_path.name}", needed, device=device, limit=limit)
    return LoadPlan(needed, bundle.base.sha256 if bundle.base else None, layout)


def weights_layout(bundle_path: Path, dtype: str | None) -> Layout:
    """The tensors ``GET /models/{digest}/weights?dtype=`` must send for a cached bundle."""
    import mcnc_core
    from mcnc_core.reconstruct import output_dtype
    from mcnc_core.safetensors_io import TORCH_TO_DTYPE

    bundle = mcnc_core.load_bundle(bundle_path)
    want = _torch_dtype(None if dtype in (None, "native") else dtype)
    return {e.name: (TORCH_TO_DTYPE[output_dtype(e, want)], e.shape) for e in bundle.manifest}


def given_base(base: Mapping[str, Tensor] | nn.Module) -> Mapping[str, Tensor]:
    """A base the caller holds as a state dict (a module's ``state_dict()``, aliasing its tensors)."""
    from torch import nn

    return base.state_dict() if isinstance(base, nn.Module) else base


def check_given_base(bundle_path: Path, base: Mapping[str, Tensor]) -> None:
    """Check a caller's base against the digest a delta bundle was trained on.

    The ``mcnc_core.state_digest`` covers exactly the tensors the bundle reads; extra ones are ignored.

    Raises:
        BaseMismatchError: tensors missing, of another shape or dtype, or another digest (both named).
        InvalidArgumentError: the bundle is a full-mode model (it reads no base).
    """
    import mcnc_core
    from mcnc_core.reconstruct import check_base

    bundle = mcnc_core.load_bundle(bundle_path)
    if bundle.base is None:
        raise InvalidArgumentError(f"{bundle_path.name} is a full-mode bundle: it reads no base; do not pass base=")
    try:
        check_base(bundle, base)
    except mcnc_core.BaseMismatchError as exc:
        raise BaseMismatchError(f"the base passed to load() is not this delta's ({bundle.base.name}): {exc}") from exc


def reconstruct_local(
    bundle_path: Path,
    base_path: Path | None,
    *,
    device: str,
    dtype: Any,
    model: nn.Module | None,
    verify: bool,
    base: Mapping[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], float]:
    """Reconstruct a cached bundle; optionally load it into ``model`` (strict).

    With ``model`` and no ``dtype`` the weights are decoded straight into the model's tensors
    (``mcnc_core.reconstruct_into``) and its ``state_dict()`` is returned.

    Args:
        base_path: a cached base file (its digest was checked when it entered the cache).
        base: instead, a base the caller holds, already checked with ``check_given_base``.

    Returns:
        ``(state_dict, seconds)``.

    Raises:
        IntegrityError: the reconstruction does not match the bundle's fingerprint, or the base's
            digest differs from the one the bundle references. Decoding straight into ``model``,
            the tensors before the one named have been written.
        StateDictMismatchError: ``model`` has other keys than the reconstruction (nothing written).
    """
    from safetensors.torch import load_file

    import mcnc_core
    from mcnc_core.reconstruct import target_misfit

    start = time.perf_counter()
    bundle = mcnc_core.load_bundle(bundle_path)
    if base_path is not None:
        base = load_file(base_path)
    if model is not None:
        fit = target_misfit(bundle, model.state_dict())
        if any(fit):
            raise StateDictMismatchError(fit.missing, fit.unexpected, fit.shapes, fit.meta)
    try:
        # Every base was checked against its digest already: on entering the cache, or given.
        if model is not None and dtype is None:
            # Straight into the model's tensors: no second copy of the weights, no fresh pages.
            mcnc_core.reconstruct_into(bundle, model, base=base, device=device, verify=verify, verify_base=False)
            return model.state_dict(), time.perf_counter() - start
        state = mcnc_core.reconstruct(
            bundle, base=base, device=device, dtype=_torch_dtype(dtype), verify=verify, verify_base=False
        )
    except (mcnc_core.FingerprintMismatchError, mcnc_core.BaseMismatchError) as exc:
        raise IntegrityError(str(exc)) from exc
    if model is not None:
        model.load_state_dict(state, strict=True)
    return state, time.perf_counter() - start


def export_adapter(
    bundle_path: Path, out_dir: Path, *, dtype: Any, base_model_name_or_path: str | None, limit: int | None = None
) -> int:
    """Write a cached delta bundle as a PEFT LoRA adapter directory (``mcnc_core.export_peft``).

    The factors are held twice (tensors, then their safetensors bytes) besides the decode's peak;
    that is checked against ``limit`` (``MCNC_MAX_LOAD_BYTES``, else free memory) first.

    Returns:
        The bytes written (``adapter_config.json`` and ``adapter_model.safetensors``).

    Raises:
        AdapterExportError: the bundle has no exact PEFT LoRA form (full mode, rank 0, ...).
        InsufficientMemoryError: the export would not fit (nothing was allocated).
    """
    import mcnc_core
    from client._memory import check_fits
    from mcnc_core.safetensors_io import ITEMSIZE, TORCH_TO_DTYPE

    bundle = mcnc_core.load_bundle(bundle_path)
    size = ITEMSIZE[TORCH_TO_DTYPE[_torch_dtype(dtype)]]
    factors = sum(sum(math.prod(f) for f in e.factors()) for e in bundle.manifest if e.storage == "mcnc" and e.rank)
    raw = sum(t.numel() * t.element_size() for t in bundle.raw.values())
    needed = 2 * (factors * size + raw) + _peak_decode_bytes(bundle)
    check_fits(f"exporting {bundle_path.name} as an adapter", needed, device="cpu", limit=limit)
    try:
        out = mcnc_core.export_peft(
            bundle, out_dir, dtype=_torch_dtype(dtype), base_model_name_or_path=base_model_name_or_path
        )
    except mcnc_core.ExportError as exc:
        raise AdapterExportError(str(exc)) from exc
    from mcnc_core.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    return sum((out / name).stat().st_size for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))


def state_digest_file(path: Path) -> str:
    """``mcnc_core`` state digest of a safetensors file, read one tensor at a time.

    Raises:
        IntegrityError: the file is not a readable safetensors file.
    """
    from mcnc_core.fingerprint import state_digest_file as digest_of_file

    try:
        return digest_of_file(path)[0]
    except Exception as exc:  # safetensors raises its own error type
        raise IntegrityError(f"{path} is not a readable safetensors file: {exc}") from exc


def verify_weights_file(weights_path: Path, bundle_path: Path) -> int:
    """Check a downloaded weights file tensor by tensor against the bundle's fingerprint.

    Returns:
        The number of tensors checked.

    Raises:
        IntegrityError: a tensor is missing, extra, mis-shaped or outside the fingerprint tolerance.
    """
    import mcnc_core

    bundle = mcnc_core.load_bundle(bundle_path)
    try:
        return _check_file(weights_path, bundle)
    except IntegrityError:
        raise
    except Exception as exc:  # safetensors raises its own error type for unreadable files
        raise IntegrityError(f"{weights_path} is not a readable safetensors file: {exc}") from exc


def _check_file(weights_path: Path, bundle: Any) -> int:
    from safetensors import safe_open

    from mcnc_core import FingerprintMismatchError
    from mcnc_core.fingerprint import check_tensor

    index = {e.name: i for i, e in enumerate(bundle.manifest)}
    with safe_open(str(weights_path), framework="pt") as f:
        names = set(f.keys())
        if names != set(index):
            raise IntegrityError(
                f"weights file tensors differ from the bundle: missing {sorted(set(index) - names)[:5]}, "
                f"unexpected {sorted(names - set(index))[:5]}"
            )
        for name in names:
            t = f.get_tensor(name)
            entry = bundle.manifest[index[name]]
            if tuple(t.shape) != entry.shape:
                raise IntegrityError(f"tensor {name!r} has shape {list(t.shape)}, the bundle says {list(entry.shape)}")
            if name in bundle.fingerprint:
                try:
                    check_tensor(name, t, index[name], bundle.fingerprint[name])
                except FingerprintMismatchError as exc:
                    raise IntegrityError(str(exc)) from exc
    return len(names)
