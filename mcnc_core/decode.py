"""Turn a tensor's codes into its weights: one code path for training and reconstruction.

Training (autograd) and reconstruction (writing into a preallocated output) decode chunks in
the same blocks of rows, so every GEMM has the same shape in both and the reconstructed weights
equal the trained ones bit for bit on the same device. Blocks also bound the working set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mcnc_core.generator import Generator

__all__ = ["block_chunks", "decode_tensor", "decode_tensor_into"]

# Elements decoded per block: 1 MiB of float32 on CPU (fits L2), 64 MiB on accelerators.
_CPU_BLOCK_ELEMS = 1 << 18
_GPU_BLOCK_ELEMS = 1 << 24


def block_chunks(chunk_size: int, device: torch.device) -> int:
    """Rows (chunks) per decoding block on ``device``; a fixed function of its inputs."""
    elems = _CPU_BLOCK_ELEMS if device.type == "cpu" else _GPU_BLOCK_ELEMS
    return max(1, elems // chunk_size)


def _factor_chunks(factors: Sequence[tuple[int, ...]], d: int) -> list[int]:
    return [-(-math.prod(f) // d) for f in factors]


def _combine(factors: list[Tensor], shape: tuple[int, ...], base: Tensor | None) -> Tensor:
    # rank 0: one factor of the tensor's shape; rank r: A (rows, r) @ B (r, cols).
    w = factors[0] if len(factors) == 1 else factors[0] @ factors[1]
    w = w.reshape(shape)
    return w if base is None else base.to(torch.float32) + w


def decode_tensor(
    gen: Generator,
    alpha: Tensor,
    beta: Tensor,
    shape: tuple[int, ...],
    factors: Sequence[tuple[int, ...]],
    base: Tensor | None = None,
) -> Tensor:
    """Differentiable decode of one tensor.

    Args:
        gen: the generator.
        alpha: ``(n, k)`` float32 codes of this tensor's chunks (all factors, in order).
        beta: ``(n,)`` float32 scales.
        shape: output shape.
        factors: factor shapes (``manifest.factor_shapes``); each starts on a fresh chunk and
            its last chunk's padding is dropped.
        base: delta mode: the base tensor (``shape``), added in float32.

    Returns:
        float32 tensor of ``shape``.
    """
    d = gen.spec.chunk_size
    step = block_chunks(d, alpha.device)
    n = alpha.shape[0]
    blocks = [gen.decode(alpha[i : i + step], beta[i : i + step]) for i in range(0, n, step)]
    flat = torch.cat(blocks).reshape(-1) if len(blocks) > 1 else blocks[0].reshape(-1)  # (n * d,)
    parts, start = [], 0
    for f, c in zip(factors, _factor_chunks(factors, d), strict=True):
        parts.append(flat[start * d : start * d + math.prod(f)].reshape(f))
        start += c
    return _combine(parts, shape, base)


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

    Full-rank float32 outputs are written block by block straight into ``out`` by the final GEMM:
    each weight is written once, the working set is one block. Other cases (low rank, delta,
    non-float32 ``out``) decode into float32 first and combine.

    Args:
        out: contiguous tensor of ``shape`` (any floating dtype) on ``alpha``'s device.

    Returns:
        ``out``.
    """
    if len(factors) > 1 or base is not None or out.dtype != torch.float32:
        w = decode_tensor(gen, alpha, beta, shape, factors, base)
        return out.copy_(w)
    d = gen.spec.chunk_size
    step = block_chunks(d, alpha.device)
    numel = out.numel()
    flat = out.view(-1)
    for i in range(0, alpha.shape[0], step):
        rows = min(step, alpha.shape[0] - i)
        hs = gen.scaled_hidden(alpha[i : i + rows], beta[i : i + rows])  # (rows, width)
        lo = i * d
        if lo + rows * d <= numel:
            torch.matmul(hs, gen.w_out_t, out=flat[lo : lo + rows * d].view(rows, d))
        else:  # the block holding the last, padded chunk: same GEMM shape, then copy the used part
            block = hs @ gen.w_out_t  # (rows, d)
            flat[lo:].copy_(block.reshape(-1)[: numel - lo])
    return out
