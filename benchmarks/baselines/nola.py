"""NOLA (Koohpayegani et al., ICLR 2024), from scratch: per layer ``W = A @ B`` with
``A = sum_i a_i A_i`` (``out x r``) and ``B = sum_j b_j B_j`` (``r x in``).

``A_i``, ``B_j`` are frozen ``U(-1, 1)`` matrices from a per-layer seed; only ``a``, ``b`` are
trained. For fine-tuning NOLA adds ``A @ B`` to the frozen weight with ``b = 0``; trained from
scratch the layer *is* ``A @ B``, so both coefficient vectors start random, scaled so that ``W``
has the variance of PyTorch's default init (``1 / (3 fan_in)``). The budget is split across
layers in proportion to their size (at least 2 per layer), and within a layer evenly between
``a`` and ``b``. Conv kernels are flattened to ``out x (in * kernel)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmarks.baselines.common import Reparam, fan_in

__all__ = ["NOLA", "split_budget"]


def split_budget(total: int, sizes: list[int], minimum: int) -> list[int]:
    """``total`` split in proportion to ``sizes`` (largest remainder), each share >= ``minimum``."""
    n = len(sizes)
    if total < minimum * n:
        raise ValueError(f"budget {total} < {minimum} per layer x {n} layers")
    free = total - minimum * n
    raw = [free * s / sum(sizes) for s in sizes]
    share = [math.floor(r) for r in raw]
    for i in sorted(range(n), key=lambda i: raw[i] - share[i], reverse=True)[: free - sum(share)]:
        share[i] += 1
    return [minimum + s for s in share]


class NOLA(Reparam):
    def __init__(self, net: nn.Module, n_coef: int, seed: int, rank: int = 8) -> None:
        super().__init__(net)
        sizes = [math.prod(s) for s in self.shapes.values()]
        self.budget = split_budget(n_coef, sizes, 2)
        gen = torch.Generator().manual_seed(seed)
        self.a = nn.ParameterList()
        self.b = nn.ParameterList()
        self.ranks = []
        for li, (shape, c) in enumerate(zip(self.shapes.values(), self.budget, strict=True)):
            rows, cols = shape[0], fan_in(shape)
            r = min(rank, rows, cols)
            na, nb = c // 2, c - c // 2
            g = torch.Generator().manual_seed(seed * 1_000_003 + li)
            self.register_buffer(f"A{li}", torch.rand(na, rows * r, generator=g) * 2 - 1, persistent=False)
            self.register_buffer(f"B{li}", torch.rand(nb, r * cols, generator=g) * 2 - 1, persistent=False)
            # var(W) = r var(A) var(B) = 1/(3 fan_in), var(A) = var(B); var(A) = na * s_a^2 / 3.
            v = math.sqrt(1.0 / (3 * cols) / r)
            self.a.append(nn.Parameter(torch.randn(na, generator=gen) * math.sqrt(3 * v / na)))
            self.b.append(nn.Parameter(torch.randn(nb, generator=gen) * math.sqrt(3 * v / nb)))
            self.ranks.append(r)

    def weights(self) -> dict[str, Tensor]:
        out = {}
        for li, (name, shape) in enumerate(self.shapes.items()):
            r, rows = self.ranks[li], shape[0]
            a_mat = (self.a[li] @ getattr(self, f"A{li}")).view(rows, r)
            b_mat = (self.b[li] @ getattr(self, f"B{li}")).view(r, -1)
            out[name] = (a_mat @ b_mat).view(shape)
        return out

    def stored_numbers(self) -> int:
        return sum(p.numel() for p in self.a) + sum(p.numel() for p in self.b)
