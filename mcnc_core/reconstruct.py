"""``reconstruct`` / ``iter_reconstruct``: a bundle back to a state dict, on CPU or CUDA."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from mcnc_core.bundle import Bundle
from mcnc_core.decode import decode_tensor_into
from mcnc_core.devices import exact_float32, resolve_device
from mcnc_core.errors import BaseMismatchError, ConfigError, ModelError
from mcnc_core.fingerprint import check_tensor, state_digest
from mcnc_core.generator import Generator, GeneratorSpec
from mcnc_core.hostmem import OutputRecycler
from mcnc_core.manifest import FLOAT_DTYPES, TensorEntry
from mcnc_core.safetensors_io import DTYPE_TO_TORCH, TORCH_TO_DTYPE

__all__ = [
    "base_names",
    "check_base",
    "iter_reconstruct",
    "output_dtype",
    "reconstruct",
    "reconstruct_into",
    "target_misfit",
]

if TYPE_CHECKING:
    from mcnc_core.backend import Backend

DeviceLike = str | torch.device


@functools.lru_cache(maxsize=16)
def _generator(spec: GeneratorSpec, device: torch.device) -> Generator:
    return Generator(spec).to(device)


def base_names(bundle: Bundle) -> list[str]:
    """Names of the base tensors a delta bundle reads (empty for full mode), manifest order."""
    if bundle.base is None:
        return []
    return [e.name for e in bundle.manifest if e.storage in ("mcnc", "base")]


def check_base(bundle: Bundle, base: Mapping[str, Tensor] | None, *, verify_digest: bool = True) -> None:
    """Check that ``base`` holds what ``bundle`` reads, with the right shapes, dtypes and digest.

    Extra tensors in ``base`` are ignored; the digest covers exactly ``base_names(bundle)``.

    Raises:
        BaseMismatchError: naming the missing/mismatched tensor or both digests.
    """
    if bundle.base is None:
        return
    if base is None:
        raise BaseMismatchError(
            f"delta bundle needs its base {bundle.base.name or ''} (sha256 {bundle.base.sha256}); pass base=state_dict"
        )
    names = base_names(bundle)
    missing = [n for n in names if n not in base]
    if missing:
        raise BaseMismatchError(f"base lacks {len(missing)} tensors the bundle needs, e.g. {missing[:5]}")
    for n in names:
        e, t = bundle.entry(n), base[n]
        if tuple(t.shape) != e.shape or TORCH_TO_DTYPE.get(t.dtype) != e.dtype:
            raise BaseMismatchError(
                f"base tensor {n!r} is {TORCH_TO_DTYPE.get(t.dtype)}{list(t.shape)}, "
                f"the bundle needs {e.dtype}{list(e.shape)}"
            )
    if verify_digest:
        digest = state_digest({n: base[n] for n in names})
        if digest != bundle.base.sha256:
            raise BaseMismatchError(f"base digest is {digest}, the bundle was trained on {bundle.base.sha256}")


def output_dtype(entry: TensorEntry, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype ``iter_reconstruct`` yields for ``entry``: ``dtype`` for floating tensors if given."""
    if dtype is not None and entry.dtype in FLOAT_DTYPES:
        return dtype
    return DTYPE_TO_TORCH[entry.dtype]


_device = resolve_device  # the name earlier releases used


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """An output dtype given as a ``torch.dtype`` or its name (``"float16"``, ``"torch.bfloat16"``).

    Raises:
        ConfigError: anything else, naming the accepted values.
    """
    if dtype is None or dtype in _DTYPES.values():
        return dtype  # type: ignore[return-value]
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ConfigError(f"dtype must be one of {sorted(_DTYPES)} (a torch.dtype or its name) or None, got {dtype!r}")


def _allocator(dev: torch.device, recycler: OutputRecycler) -> Callable[..., Tensor]:
    """``empty(shape, dtype=float32)`` on ``dev``: on CPU through ``recycler``, which may hand out
    the memory of a tensor the consumer has dropped (no page faults, mcnc_core.hostmem)."""
    if dev.type == "cpu":
        return recycler.empty
    return lambda shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device=dev)


def _decode(
    bundle: Bundle,
    index: int,
    e: TensorEntry,
    gen: Generator,
    base: Mapping[str, Tensor] | None,
    out: Tensor,
    verify: bool,
) -> Tensor:
    """Decode compressed entry ``e`` into ``out`` (contiguous, on the generator's device; float32
    when ``verify``) and check it against the fingerprint if asked."""
    dev = out.device
    sl = slice(e.chunk_offset, e.chunk_offset + e.chunks)
    alpha = bundle.alpha[sl].to(dev, non_blocking=True)
    beta = bundle.beta[sl].to(dev, non_blocking=True)
    b = None if base is None or bundle.base is None else base[e.name].to(dev)
    decode_tensor_into(gen, alpha, beta, e.shape, e.factors(), out, b)
    if verify:
        check_tensor(e.name, out, index, bundle.fingerprint[e.name])
    return out


def _stored(bundle: Bundle, index: int, e: TensorEntry, base: Mapping[str, Tensor] | None, verify: bool) -> Tensor:
    """A raw (or, in delta mode, unchanged base) tensor as stored, checked if asked."""
    src = bundle.raw[e.name] if e.storage == "raw" else base[e.name]  # type: ignore[index]
    if verify and e.dtype in FLOAT_DTYPES:
        check_tensor(e.name, src.float(), index, bundle.fingerprint[e.name])
    return src


def iter_reconstruct(
    bundle: Bundle,
    base: Mapping[str, Tensor] | None = None,
    device: DeviceLike = "cpu",
    dtype: torch.dtype | str | None = None,
    *,
    verify: bool = False,
    verify_base: bool = True,
    names: Collection[str] | None = None,
    recycler: OutputRecycler | None = None,
    backend: Backend | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every output tensor, in manifest (state_dict) order.

    Compressed tensors are computed in float32 on ``device`` and cast to the output dtype.
    Memory: the tensors the consumer still holds, the one being decoded (plus a float32 copy
    when low rank, or when casting with ``verify``) and one decoding block per worker; on CPU the
    recycler keeps up to its ``keep`` (three by default) outputs' mappings for reuse once dropped
    (``mcnc_core.hostmem``). Outputs of 4 MiB and more live on those mappings: ordinary tensors,
    except that their storage cannot be resized.

    Args:
        bundle: the bundle.
        base: delta mode: the base state dict (extra keys ignored; tensors on any device).
        device: where to reconstruct (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: output dtype for floating tensors (``torch.float32``/``float16``/``bfloat16``/
            ``float64``, or its name); ``None`` keeps each tensor's original dtype.
        verify: check every tensor against the bundle's fingerprint (float32 values, before casting).
        verify_base: check the base's digest (turn off only when the caller already did).
        names: only yield these tensors (manifest order is kept); ``None`` yields all.
        recycler: CPU: where large outputs get their memory; a long-lived one (a server's) reuses
            memory of tensors dropped after earlier calls too. ``None``: one for this call.
        backend: where outputs are allocated (its ``device`` replaces ``device``, and ``recycler``
            is not used); ``Backend.reconstruct`` passes itself and hands the tensors to the host.

    Raises:
        BaseMismatchError: delta bundle without a matching base.
        FingerprintMismatchError: with ``verify``, a tensor outside the fingerprint's tolerance.
        ConfigError: an unknown ``device`` or ``dtype``.
        DeviceUnavailableError: a CUDA device this machine does not have.
    """
    check_base(bundle, base, verify_digest=verify_base)
    dev = backend.device if backend is not None else _device(device)
    dtype = _dtype(dtype)
    gen = _generator(bundle.spec, dev)
    empty = backend.allocator() if backend is not None else _allocator(dev, recycler or OutputRecycler())
    wanted = None if names is None else set(names)
    for index, e in enumerate(bundle.manifest):
        if wanted is not None and e.name not in wanted:
            continue
        out_dtype = output_dtype(e, dtype)
        with torch.no_grad(), exact_float32():
            if e.storage != "mcnc":
                t = empty(e.shape, out_dtype).copy_(_stored(bundle, index, e, base, verify))
            elif verify and out_dtype != torch.float32:  # the fingerprint covers the float32 values
                t32 = _decode(bundle, index, e, gen, base, empty(e.shape), verify)
                t = empty(e.shape, out_dtype).copy_(t32)
                del t32  # the float32 scratch is free for the next tensor
            else:
                t = _decode(bundle, index, e, gen, base, empty(e.shape, out_dtype), verify)
        yield e.name, t
        del t  # hold nothing while the consumer works: a dropped output can be recycled


def reconstruct(
    bundle: Bundle,
    base: Mapping[str, Tensor] | None = None,
    device: DeviceLike = "cpu",
    dtype: torch.dtype | str | None = None,
    *,
    verify: bool = False,
    verify_base: bool = True,
) -> dict[str, Tensor]:
    """The full state dict of a bundle (``dict(iter_reconstruct(...))``).

    The result loads with ``strict=True`` into a fresh instance of the original architecture.
    Same arguments and errors as ``iter_reconstruct``.
    """
    return dict(iter_reconstruct(bundle, base, device, dtype, verify=verify, verify_base=verify_base))


class Misfit(NamedTuple):
    """How a target state dict does not fit a bundle (each list empty when it fits).

    ``missing``/``unexpected`` as ``load_state_dict`` names them: the target's keys the bundle
    lacks, and the bundle's keys the target lacks; ``shapes``: names whose shapes differ;
    ``meta``: names whose target tensor is on the meta device (no memory to write into).
    """

    missing: list[str]
    unexpected: list[str]
    shapes: list[str]
    meta: list[str]


def target_misfit(bundle: Bundle, targets: Mapping[str, Tensor]) -> Misfit:
    """What keeps ``reconstruct_into(bundle, targets)`` from writing (manifest order within each list)."""
    names = [e.name for e in bundle.manifest]
    common = [e for e in bundle.manifest if e.name in targets]
    return Misfit(
        sorted(set(targets) - set(names)),
        sorted(set(names) - set(targets)),
        [e.name for e in common if tuple(targets[e.name].shape) != e.shape],
        [e.name for e in common if targets[e.name].is_meta],
    )


def reconstruct_into(
    bundle: Bundle,
    target: nn.Module | Mapping[str, Tensor],
    base: Mapping[str, Tensor] | None = None,
    *,
    device: DeviceLike | None = None,
    verify: bool = False,
    verify_base: bool = True,
) -> None:
    """Decode a bundle straight into existing tensors: a model's parameters and buffers.

    The values of ``target.load_state_dict(reconstruct(bundle), strict=True)`` without a second
    copy of the weights: each compressed tensor is decoded into its target's own memory (already
    mapped: no page faults) when the target is contiguous, on the decoding device and float32 or
    of the tensor's stored dtype (with ``verify``: float32); otherwise through a recycled float32
    scratch, rounded to the stored dtype first (as ``reconstruct`` does), then copied in. A target may
    hold the delta's own base (``base=model.state_dict()``): each base value is read before it is
    overwritten.

    Args:
        bundle: the bundle.
        target: a module (its ``state_dict()`` tensors are written in place) or a mapping of
            names to the tensors to write.
        base: delta mode: the base state dict, as for ``reconstruct``.
        device: where to decode; ``None``: on each target tensor's own device.
        verify, verify_base: as for ``reconstruct``.

    Raises:
        ModelError: the target's keys differ from the bundle's (missing and unexpected keys
            named as by ``load_state_dict``), a shape differs, or a target tensor is on the meta
            device (no memory to write into); nothing has been written.
        BaseMismatchError: as ``reconstruct``; nothing has been written.
        FingerprintMismatchError: with ``verify``; the tensors before the one named, and possibly
            that one, have been written.
    """
    targets = target.state_dict() if isinstance(target, nn.Module) else target
    fit = target_misfit(bundle, targets)
    if fit.missing or fit.unexpected:
        raise ModelError(
            f"bundle does not fit the target: missing keys {fit.missing[:10]}, unexpected {fit.unexpected[:10]}"
        )
    if fit.shapes:
        n = fit.shapes[0]
        raise ModelError(
            f"target tensor {n!r} has shape {list(targets[n].shape)}, the bundle's {list(bundle.entry(n).shape)}"
        )
    if fit.meta:
        raise ModelError(f"target tensor {fit.meta[0]!r} is on the meta device: materialise it first (to_empty)")
    check_base(bundle, base, verify_digest=verify_base)
    recycler = OutputRecycler()
    with torch.no_grad(), exact_float32():
        for index, e in enumerate(bundle.manifest):
            dst = targets[e.name]
            if e.storage != "mcnc":
                dst.copy_(_stored(bundle, index, e, base, verify))
                continue
            dev = dst.device if device is None else _device(device)
            gen = _generator(bundle.spec, dev)
            stored = DTYPE_TO_TORCH[e.dtype]
            # Straight in when one rounding (float32 -> the target's dtype) is what reconstruct +
            # load_state_dict would give (float32 -> float64 is exact), and the fingerprint, if
            # checked, sees float32 values.
            one_rounding = stored in (torch.float32, torch.float64) or dst.dtype == stored
            if (
                dst.device == dev
                and dst.is_contiguous()
                and one_rounding
                and (dst.dtype == torch.float32 or not verify)
            ):
                _decode(bundle, index, e, gen, base, dst, verify)
                continue
            empty = _allocator(dev, recycler)
            t32 = _decode(bundle, index, e, gen, base, empty(e.shape), verify)
            dst.copy_(t32 if stored == torch.float32 else empty(e.shape, stored).copy_(t32))
