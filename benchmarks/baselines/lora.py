"""LoRA-style low rank from scratch: per layer ``W = A @ B`` (``out x r`` and ``r x in``), factors trained
directly. One rank for the whole model (capped per layer at ``min(out, in)``); both factors start
random with ``var(W) = 1 / (3 fan_in)`` (PyTorch's default init variance)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.baselines.common import Reparam, fan_in

__all__ = ["LowRank", "lowrank_numbers"]


def lowrank_numbers(shapes: list[tuple[int, ...]], rank: int) -> int:
    return sum(min(rank, s[0], fan_in(s)) * (s[0] + fan_in(s)) for s in shapes)


class LowRank(Reparam):
    def __init__(self, net: nn.Module, rank: int, seed: int) -> None:
        super().__init__(net)
        gen = torch.Generator().manual_seed(seed)
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        for shape in self.shapes.values():
            rows, cols = shape[0], fan_in(shape)
            r = min(rank, rows, cols)
            std = (1.0 / (3 * cols) / r) ** 0.25
            self.A.append(nn.Parameter(torch.randn(rows, r, generator=gen) * std))
            self.B.append(nn.Parameter(torch.randn(r, cols, generator=gen) * std))

    def weights(self) -> dict[str, Tensor]:
        return {
            name: (a @ b).view(shape) for (name, shape), a, b in zip(self.shapes.items(), self.A, self.B, strict=True)
        }

    def stored_numbers(self) -> int:
        return sum(p.numel() for p in self.A) + sum(p.numel() for p in self.B)
