"""``reconstruct`` / ``iter_reconstruct``: a bundle back to a state dict, on CPU or CUDA."""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import sys
from collections.abc import Collection, Iterator, Mapping

import torch
from torch import Tensor

from mcnc_core.bundle import Bundle
from mcnc_core.decode import decode_tensor_into
from mcnc_core.errors import BaseMismatchError
from mcnc_core.fingerprint import check_tensor, state_digest
from mcnc_core.generator import Generator, GeneratorSpec
from mcnc_core.manifest import FLOAT_DTYPES, TensorEntry
from mcnc_core.safetensors_io import DTYPE_TO_TORCH, TORCH_TO_DTYPE

__all__ = ["base_names", "check_base", "iter_reconstruct", "output_dtype", "reconstruct"]

DeviceLike = str | torch.device


@functools.lru_cache(maxsize=16)
def _generator(spec: GeneratorSpec, device: torch.device) -> Generator:
    return Generator(spec).to(device)


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    # TF32 (10-bit mantissa) would break the fingerprint tolerance; reconstruct in true fp32.
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _OutputRecycler:
    """Large float32 CPU outputs backed by private anonymous mappings that are reused once dropped.

    Writing a freshly allocated tensor costs a page fault per 4 KiB page on first touch; tensors
    of 32 MiB and more always get fresh pages from glibc (its largest mmap threshold), and on
    virtual machines a fault can cost more than the decoding itself (measured 1.0-1.4 GB/s for
    ``torch.empty`` + ``fill_`` against 11-15 GB/s into mapped pages, see docs/benchmarks.md).
    When ``iter_reconstruct``'s consumer drops a tensor before asking for the next one (a server
    streaming a model out), the next tensor reuses its mapping, already faulted in.

    A mapping is reused only when nothing references it: every tensor, view, numpy array or
    storage made from it holds the mapping (through the buffer protocol), so its reference count
    is back to its baseline exactly when all of them are gone. At most ``keep`` mappings are
    tracked and a mapping is reused only for a tensor of at least half its size, so memory
    stays bounded by about the largest tensor beyond what the consumer itself keeps.
    """

    MIN_BYTES = 32 << 20

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._bufs: list[mmap.mmap] = []
        # References to a tracked mapping nothing else holds, as ``_refs`` counts them.
        self._bufs.append(mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        self._baseline = self._refs(0)
        self._bufs.clear()

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._bufs[i])

    def empty(self, shape: tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        nbytes = numel * 4
        if nbytes < self.MIN_BYTES:
            return torch.empty(shape, dtype=torch.float32)
        for i in range(len(self._bufs)):  # no loop variable bound to a mapping: it would count
            if nbytes <= len(self._bufs[i]) <= 2 * nbytes and self._refs(i) == self._baseline:
                return torch.frombuffer(self._bufs[i], dtype=torch.float32, count=numel).view(shape)
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._bufs.append(buf)
        del self._bufs[: -self.keep]  # forget the oldest (their tensors keep them alive)
        return torch.frombuffer(buf, dtype=torch.float32, count=numel).view(shape)


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


def iter_reconstruct(
    bundle: Bundle,
    base: Mapping[str, Tensor] | None = None,
    device: DeviceLike = "cpu",
    dtype: torch.dtype | None = None,
    *,
    verify: bool = False,
    verify_base: bool = True,
    names: Collection[str] | None = None,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(name, tensor)`` for every output tensor, in manifest (state_dict) order.

    Compressed tensors are computed in float32 on ``device`` and cast to the output dtype.
    Peak memory: the largest output tensor (plus its float32 copy when casting, low rank or
    delta) and one decoding block; nothing is retained between yields.

    Args:
        bundle: the bundle.
        base: delta mode: the base state dict (extra keys ignored; tensors on any device).
        device: where to reconstruct (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        dtype: output dtype for floating tensors (``torch.float32``/``float16``/``bfloat16``);
            ``None`` keeps each tensor's original dtype.
        verify: check every tensor against the bundle's fingerprint (float32 values, before casting).
        verify_base: check the base's digest (turn off only when the caller already did).
        names: only yield these tensors (manifest order is kept); ``None`` yields all.

    Raises:
        BaseMismatchError: delta bundle without a matching base.
        FingerprintMismatchError: with ``verify``, a tensor outside the fingerprint's tolerance.
    """
    check_base(bundle, base, verify_digest=verify_base)
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    gen = _generator(bundle.spec, dev)
    recycler = _OutputRecycler() if dev.type == "cpu" and hasattr(mmap, "MAP_ANONYMOUS") else None
    wanted = None if names is None else set(names)
    for index, e in enumerate(bundle.manifest):
        if wanted is not None and e.name not in wanted:
            continue
        out_dtype = output_dtype(e, dtype)
        with torch.no_grad(), _full_fp32_matmul():
            if e.storage == "mcnc":
                sl = slice(e.chunk_offset, e.chunk_offset + e.chunks)
                alpha = bundle.alpha[sl].to(dev, non_blocking=True)
                beta = bundle.beta[sl].to(dev, non_blocking=True)
                b = None if base is None or bundle.base is None else base[e.name].to(dev)
                if recycler is not None and out_dtype == torch.float32 and e.rank == 0 and b is None:
                    t32 = recycler.empty(e.shape)  # written in place by the final GEMM: reuse pays
                else:
                    t32 = torch.empty(e.shape, dtype=torch.float32, device=dev)
                decode_tensor_into(gen, alpha, beta, e.shape, e.factors(), t32, b)
                if verify:
                    check_tensor(e.name, t32, index, bundle.fingerprint[e.name])
                t = t32 if out_dtype == torch.float32 else t32.to(out_dtype)
                del t32
            else:
                src = bundle.raw[e.name] if e.storage == "raw" else base[e.name]  # type: ignore[index]
                if verify and e.dtype in FLOAT_DTYPES:
                    check_tensor(e.name, src.float(), index, bundle.fingerprint[e.name])
                t = src.to(device=dev, dtype=out_dtype, copy=True)
        yield e.name, t
        del t  # hold nothing while the consumer works: a dropped output can be recycled


def reconstruct(
    bundle: Bundle,
    base: Mapping[str, Tensor] | None = None,
    device: DeviceLike = "cpu",
    dtype: torch.dtype | None = None,
    *,
    verify: bool = False,
    verify_base: bool = True,
) -> dict[str, Tensor]:
    """The full state dict of a bundle (``dict(iter_reconstruct(...))``).

    The result loads with ``strict=True`` into a fresh instance of the original architecture.
    Same arguments and errors as ``iter_reconstruct``.
    """
    return dict(iter_reconstruct(bundle, base, device, dtype, verify=verify, verify_base=verify_base))
