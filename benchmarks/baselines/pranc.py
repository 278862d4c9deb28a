"""PRANC (Nooralinejad et al., ICCV 2023): ``theta = sum_j c_j * theta_j`` over pseudo-random networks.

Each basis network ``theta_j`` is a standard initialisation of the model (PyTorch's default for
Linear/Conv weights: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) drawn from a seeded
``torch.Generator``; only the coefficients ``c`` are trained, starting at ``c_0 = 1`` and the
others 0 (the fit starts at basis network 0). Stored: the coefficients and one seed.

The basis (``n_coef x n_weights`` float32) is generated once, in blocks of rows, into one
preallocated matrix; ``max_bytes`` bounds it (PRANC's reconstruction cost grows with both sizes,
which is why the benchmark's models are small).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmarks.baselines.common import Reparam, fan_in

__all__ = ["PRANC"]


class PRANC(Reparam):
    def __init__(
        self, net: nn.Module, n_coef: int, seed: int, *, block_rows: int = 64, max_bytes: int = 512 << 20
    ) -> None:
        super().__init__(net)
        if n_coef < 1:
            raise ValueError("PRANC needs at least one coefficient")
        sizes = [math.prod(s) for s in self.shapes.values()]
        total = sum(sizes)
        if n_coef * total * 4 > max_bytes:
            raise ValueError(f"PRANC basis {n_coef} x {total} floats exceeds max_bytes={max_bytes}")
        bounds = [1.0 / math.sqrt(fan_in(s)) for s in self.shapes.values()]
        basis = torch.empty(n_coef, total)
        g = torch.Generator().manual_seed(seed)
        for r0 in range(0, n_coef, block_rows):
            rows = basis[r0 : r0 + block_rows]
            col = 0
            for size, b in zip(sizes, bounds, strict=True):
                torch.rand(rows.shape[0], size, generator=g, out=rows[:, col : col + size])
                rows[:, col : col + size].mul_(2 * b).sub_(b)
                col += size
        self.register_buffer("basis", basis, persistent=False)
        c = torch.zeros(n_coef)
        c[0] = 1.0
        self.coef = nn.Parameter(c)
        self.sizes = sizes

    def weights(self) -> dict[str, Tensor]:
        flat = self.coef @ self.basis
        out = {}
        for (name, shape), part in zip(self.shapes.items(), flat.split(self.sizes), strict=True):
            out[name] = part.view(shape)
        return out

    def stored_numbers(self) -> int:
        return self.coef.numel()
