"""Turn a tensor's codes into its weights: one code path for training and reconstruction.

Training (autograd) and reconstruction (writing into a preallocated output) decode chunks in
the same blocks of rows, so every GEMM has the same shape in both and the reconstructed weights
equal the trained ones bit for bit on the same device. Blocks also bound the working set.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mcnc_core.generator import Generator, _kernels  # _kernels: None without the extension

__all__ = ["block_chunks", "decode_factors", "decode_factors_as", "decode_tensor", "decode_tensor_into"]

# Elements decoded per block. CPU: from 256 Ki (1 MiB of float32, so small tensors still split
# into blocks for both workers) up to 2 Mi for big tensors (fewer per-op overheads: measured
# 403 -> 514-581 Mparams/s on a 4096x4096 tensor, 2 cores); accelerators: 16 Mi.
_CPU_BLOCK_ELEMS = (1 << 18, 1 << 21)
_GPU_BLOCK_ELEMS = 1 << 24
_TARGET_BLOCKS = 8  # aim for this many blocks per tensor between the bounds


# Every output GEMM has a multiple of this many rows (the last block is padded with zero rows):
# MKL's float32 GEMM gives thread-count-dependent last bits for some small row counts (5-7 and
# 9-11 rows with 1 vs 2 threads, measured), never for multiples of 16 (tests/core/test_decode_paths.py).
_ROW_QUANTUM = 16


_EXACT_IN_FLOAT32 = (torch.float32, torch.float16, torch.bfloat16)
_DIRECT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what ``Generator.output_into`` writes

# Below this many values a slice is copied with torch (streaming stores pay off for memory-bound
# writes; a small slice of a small tensor is written to cache and read again soon anyway).
_NT_MIN_VALUES = 1 << 14


# ``_kernels.cast``'s out_kind per half-precision dtype: its rounding is torch's, bit for bit
# (every float32 bit pattern is checked against torch in tests/core/test_native_cast.py).
_HALF_KINDS = {torch.float16: 1, torch.bfloat16: 2}
_NATIVE_CAST = _kernels is not None and _kernels.gemm_available()


def _store(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)`` for 1-d contiguous ``dst``/``src`` (same numel). On CPU a float32 ``src``
    goes through streaming stores, which skip reading the destination: a copy into float32, or
    torch's rounding to float16/bfloat16 done by the native kernel (the same bits as ``copy_``)."""
    if (
        _kernels is not None
        and src.dtype == torch.float32
        and dst.device.type == "cpu"
        and src.device.type == "cpu"
        and dst.numel() >= _NT_MIN_VALUES
    ):
        if dst.dtype == torch.float32:
            _kernels.copy(dst.data_ptr(), src.data_ptr(), dst.numel())
            return
        if _NATIVE_CAST and dst.dtype in _HALF_KINDS:
            _kernels.cast(dst.data_ptr(), src.data_ptr(), dst.numel(), _HALF_KINDS[dst.dtype])
            return
    dst.copy_(src)


def _overlap(a: Tensor, b: Tensor) -> str:
    """How the memory of two contiguous 1-d tensors overlaps: ``"none"``, ``"same"`` (the same
    elements: equal start, length and dtype) or ``"partial"``."""
    if a.device != b.device:
        return "none"
    a_lo, b_lo = a.data_ptr(), b.data_ptr()
    a_hi, b_hi = a_lo + a.numel() * a.element_size(), b_lo + b.numel() * b.element_size()
    if a_hi <= b_lo or b_hi <= a_lo:
        return "none"
    return "same" if (a_lo, a_hi, a.dtype) == (b_lo, b_hi, b.dtype) else "partial"


def block_chunks(chunk_size: int, device: torch.device, n_chunks: int) -> int:
    """Rows (chunks) per decoding block for a tensor of ``n_chunks`` chunks on ``device``.

    A fixed function of its arguments, never of the thread count: training and reconstruction
    cut a tensor into the same blocks, so they compute the same bits.
    """
    if device.type == "cpu":
        lo, hi = (max(1, e // chunk_size) for e in _CPU_BLOCK_ELEMS)
        rows = min(hi, max(lo, -(-n_chunks // _TARGET_BLOCKS)))
    else:
        rows = max(1, _GPU_BLOCK_ELEMS // chunk_size)
    return rows - rows % _ROW_QUANTUM if rows >= _ROW_QUANTUM else rows


def gemm_rows(rows: int, step: int) -> int:
    """Rows of the output GEMM for a block of ``rows`` chunks (``step`` a full block): ``rows``
    rounded up to a multiple of ``min(16, step)``; both decode paths use it."""
    q = min(_ROW_QUANTUM, step)
    return -(-rows // q) * q


def _pad_rows(hs: Tensor, rows: int) -> Tensor:
    return hs if hs.shape[0] == rows else torch.cat([hs, hs.new_zeros(rows - hs.shape[0], hs.shape[1])])


def _padded_hidden(gen: Generator, alpha: Tensor, beta: Tensor, step: int) -> Tensor:
    # Pad the codes, not just the GEMM input: every GEMM of the block (hidden layers, Gram
    # norm, output) then has a row count that is a multiple of the quantum. Zero-scale rows
    # decode to zero chunks.
    m = gemm_rows(alpha.shape[0], step)
    return gen.scaled_hidden(_pad_rows(alpha, m), _pad_rows(beta[:, None], m)[:, 0])  # (m, width)


def _decode_block(gen: Generator, alpha: Tensor, beta: Tensor, step: int) -> Tensor:
    rows = alpha.shape[0]
    out = gen.output(_padded_hidden(gen, alpha, beta, step))  # (m, d)
    return out if out.shape[0] == rows else out[:rows]


class _BlockPool:
    """Persistent worker threads for decoding CPU blocks in parallel; each runs torch single-threaded.

    Why not torch's intra-op threads: every small op of a block (the hidden layers, the sines,
    one GEMM of 256 rows) would be its own OpenMP parallel region ending in a barrier, and idle
    OpenMP workers spin between regions; on a loaded machine (other processes on the cores) a
    barrier waits for a descheduled thread and throughput collapses (measured 5-10x slower than
    one thread, see docs/benchmarks.md). Blocks are independent, so the workers take whole blocks
    from a queue: no barrier inside a block, and every op of a block runs with one thread,
    whatever ``torch.get_num_threads()`` is, so results do not depend on the thread count.
    """

    def __init__(self, workers: int) -> None:
        self.tasks: queue.SimpleQueue[tuple[Callable[[], None], _Batch]] = queue.SimpleQueue()
        ready = threading.Barrier(workers + 1)
        for i in range(workers):
            threading.Thread(target=self._work, args=(ready,), name=f"mcnc-decode-{i}", daemon=True).start()
        ready.wait()

    def _work(self, ready: threading.Barrier) -> None:
        torch.get_num_threads()  # torch's lazy per-thread init first, or it would undo the next line
        torch.set_num_threads(1)  # this thread's OpenMP/MKL setting only (and torch's default, restored below)
        ready.wait()
        while True:
            fn, batch = self.tasks.get()
            try:
                with torch.no_grad():
                    fn()
            except BaseException as exc:  # handed to the caller
                batch.errors.append(exc)
            finally:
                done = batch.done
                # Drop the task before signalling: an idle worker holding the last ``fn`` would keep
                # its closure (the output tensor it wrote) alive until its next task (issue 11 D5).
                del fn, batch
                done.release()

    def run(self, fns: list[Callable[[], None]]) -> None:
        batch = _Batch()
        for fn in fns:
            self.tasks.put((fn, batch))
        for _ in fns:
            batch.done.acquire()
        if batch.errors:
            raise batch.errors[0]


class _Batch:
    def __init__(self) -> None:
        self.done = threading.Semaphore(0)
        self.errors: list[BaseException] = []


_POOLS: dict[int, _BlockPool] = {}
_POOLS_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    # A forked child (a pre-forking server, say) has none of the parent's worker threads.
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _pool(workers: int) -> _BlockPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = _BlockPool(workers)
            # The workers' set_num_threads(1) also set torch's default for threads created later;
            # restore it (this thread's own setting is unchanged: it is the same value).
            torch.set_num_threads(workers)
        return pool


def _factor_chunks(factors: Sequence[tuple[int, ...]], d: int) -> list[int]:
    return [-(-math.prod(f) // d) for f in factors]


def _combine(factors: list[Tensor], shape: tuple[int, ...], base: Tensor | None) -> Tensor:
    # rank 0: one factor of the tensor's shape; rank r: A (rows, r) @ B (r, cols).
    w = factors[0] if len(factors) == 1 else factors[0] @ factors[1]
    w = w.reshape(shape)
    return w if base is None else base.to(torch.float32) + w


def decode_factors(gen: Generator, alpha: Tensor, beta: Tensor, factors: Sequence[tuple[int, ...]]) -> list[Tensor]:
    """Differentiable decode of one tensor's factors (``A`` and ``B`` at rank > 0, itself at rank 0).

    The blocks are those of ``decode_tensor``, so the factors carry the same bits as the ones it
    combines: adapter-cost training (``x Bᵀ Aᵀ``) and reconstruction (``A @ B``) see one ``A`` and ``B``.

    Args:
        gen: the generator.
        alpha: ``(n, k)`` float32 codes of this tensor's chunks (all factors, in order).
        beta: ``(n,)`` float32 scales.
        factors: factor shapes (``manifest.factor_shapes``); each starts on a fresh chunk and
            its last chunk's padding is dropped.

    Returns:
        One float32 tensor per factor, of that factor's shape.
    """
    d = gen.spec.chunk_size
    step = block_chunks(d, alpha.device, alpha.shape[0])
    n = alpha.shape[0]
    blocks = [_decode_block(gen, alpha[i : i + step], beta[i : i + step], step) for i in range(0, n, step)]
    flat = torch.cat(blocks).reshape(-1) if len(blocks) > 1 else blocks[0].reshape(-1)  # (n * d,)
    parts, start = [], 0
    for f, c in zip(factors, _factor_chunks(factors, d), strict=True):
        parts.append(flat[start * d : start * d + math.prod(f)].reshape(f))
        start += c
    return parts


@torch.no_grad()
def decode_factors_as(
    gen: Generator, alpha: Tensor, beta: Tensor, factors: Sequence[tuple[int, ...]], dtype: torch.dtype
) -> list[Tensor]:
    """``[f.to(dtype) for f in decode_factors(...)]`` bit for bit, without autograd and faster: the
    chunks are decoded as one flat tensor by ``decode_tensor_into`` (the same blocks, so the same
    float32 values), in parallel, and a float16/bfloat16 ``dtype`` is rounded inside the output
    kernel on CPU. What adapter export (``mcnc_core.peft``) writes its LoRA factors with.

    Returns:
        One tensor per factor, of that factor's shape and ``dtype`` (views of one buffer).
    """
    d = gen.spec.chunk_size
    n = alpha.shape[0]
    flat = torch.empty(n * d, dtype=dtype, device=alpha.device)
    decode_tensor_into(gen, alpha, beta, (n * d,), [(n * d,)], flat)
    parts, start = [], 0
    for f, c in zip(factors, _factor_chunks(factors, d), strict=True):
        parts.append(flat[start * d : start * d + math.prod(f)].view(f))
        start += c
    return parts


def decode_tensor(
    gen: Generator,
    alpha: Tensor,
    beta: Tensor,
    shape: tuple[int, ...],
    factors: Sequence[tuple[int, ...]],
    base: Tensor | None = None,
) -> Tensor:
    """Differentiable decode of one tensor: its factors (``decode_factors``) combined.

    Args:
        gen, alpha, beta, factors: as for ``decode_factors``.
        shape: output shape.
        base: delta mode: the base tensor (``shape``), added in float32.

    Returns:
        float32 tensor of ``shape``.
    """
    return _combine(decode_factors(gen, alpha, beta, factors), shape, base)


@torch.no_grad()
def decode_tensor_into(
    gen: Generator,
    alpha: Tensor,
    beta: Tensor,
    shape: tuple[int, ...],
    factors: Sequence[tuple[int, ...]],
    out: Tensor,
    base: Tensor | None = None,
) -> Tensor:
    """Decode one tensor into ``out`` (same numbers as ``decode_tensor`` on the same device).

    Full-rank tensors are decoded block by block, in parallel on CPU; each block's output GEMM
    comes in slices (``Generator.output_slices``) that are copied, and cast when ``out`` is not
    float32, into ``out`` while still in cache (the working set is one block). A delta's base is
    added per slice in float32 (``w + base`` is ``base + w`` bit for bit: IEEE addition commutes).
    Low rank decodes in float32 first and combines.

    Args:
        out: contiguous tensor of ``shape`` (any floating dtype) on ``alpha``'s device.

    Returns:
        ``out``.
    """
    if len(factors) > 1:
        return out.copy_(decode_tensor(gen, alpha, beta, shape, factors, base))
    d = gen.spec.chunk_size
    step = block_chunks(d, alpha.device, alpha.shape[0])
    numel = out.numel()
    flat = out.view(-1)
    base_flat = None
    if base is not None:
        # Training adds ``base.to(float32)``: a float64 base is rounded first; float16/bfloat16
        # upcast exactly inside the add, no copy needed.
        base_flat = (base if base.dtype in _EXACT_IN_FLOAT32 else base.to(torch.float32)).reshape(-1)
        overlap = _overlap(base_flat, flat)
        # ``out`` may be the base itself (a delta applied in place, ``"same"``): every slice reads its
        # own range of the base before writing that range. Any other overlap would let one block
        # overwrite base values another still reads: copy the base first.
        if overlap == "partial":
            base_flat = base_flat.clone()

    # float16/bfloat16 outputs too: the kernel rounds its float32 results in registers (torch's
    # rounding), so a half-precision stream writes half the bytes instead of a float32 pass + a cast.
    direct = base_flat is None and out.dtype in _DIRECT_DTYPES and out.device.type == "cpu"

    def block(i: int) -> None:
        rows = min(step, alpha.shape[0] - i)
        hs = _padded_hidden(gen, alpha[i : i + rows], beta[i : i + rows], step)  # (m, width)
        lo, hi = i * d, min(numel, (i + rows) * d)
        # The native kernel writes the block's whole chunks straight into a float32, float16 or
        # bfloat16 output (a full tensor: no base to add).
        first = 0
        if direct and hi - lo >= d:
            first = (hi - lo) // d
            if not gen.output_into(hs[:first], flat[lo : lo + first * d].view(first, d)):
                first = 0
        if lo + first * d >= hi:
            return
        # Otherwise the GEMM runs exactly as in training; each of its slices gets the base added and
        # is copied (and cast) into ``out`` while it is still in cache. The padded last block's extra
        # rows are dropped. A base aliasing ``out`` is read, slice by slice, before it is written.
        for r0, part in gen.output_slices(hs[first:], reuse=True):
            a, b = lo + (first + r0) * d, min(hi, lo + (first + r0 + part.shape[0]) * d)
            if a >= b:
                break
            w = part.view(-1)[: b - a]
            if base_flat is not None:
                w.add_(base_flat[a:b])
            _store(flat[a:b], w)

    starts = range(0, alpha.shape[0], step)
    workers = torch.get_num_threads()
    # One block (a small tensor): decoded in the calling thread, as training decodes every block;
    # handing it to a worker cost more than it saved (+20-35% for 128^2-512^2 tensors, measured).
    if alpha.device.type == "cpu" and workers > 1 and len(starts) > 1:
        _pool(workers).run([functools.partial(block, i) for i in starts])
    else:
        for i in starts:
            block(i)
    return out
