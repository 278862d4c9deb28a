"""Magnitude pruning: global top-K weights by |w|, the rest zero.

Stored: K float32 values plus K indices of ``ceil(log2(layer size))`` bits each (per-layer
positions; the layer boundaries are K-independent metadata and not counted). The benchmark
trains the dense model for half the steps, prunes to the budget, and fine-tunes the surviving
weights (mask fixed) for the other half, so pruning gets the same number of steps as the others.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from benchmarks.baselines.common import Reparam

__all__ = ["MagnitudePruned", "pruning_bits_per_weight"]


def pruning_bits_per_weight(shapes: list[tuple[int, ...]]) -> int:
    """Bits stored per kept weight: a float32 value and an index wide enough for the largest layer."""
    return 32 + max(math.ceil(math.log2(math.prod(s))) for s in shapes)


class MagnitudePruned(Reparam):
    """Trainable dense copies of the weights times fixed masks (all ones until :meth:`prune`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__(net)
        self.w = nn.ParameterList([nn.Parameter(p.detach().clone()) for p in self._targets()])
        for i, p in enumerate(self.w):
            self.register_buffer(f"mask{i}", torch.ones_like(p), persistent=False)

    def _targets(self) -> list[Tensor]:
        params = dict(self.net.named_parameters())
        return [params[n] for n in self.shapes]

    @torch.no_grad()
    def prune(self, keep: int) -> None:
        mags = torch.cat([p.abs().flatten() for p in self.w])
        if keep >= mags.numel():
            return
        threshold = mags.kthvalue(mags.numel() - keep).values
        kept = 0
        for i, p in enumerate(self.w):
            m = (p.abs() > threshold).float()
            getattr(self, f"mask{i}").copy_(m)
            p.mul_(m)
            kept += int(m.sum())
        self.kept = kept

    def weights(self) -> dict[str, Tensor]:
        return {n: p * getattr(self, f"mask{i}") for i, (n, p) in enumerate(zip(self.shapes, self.w, strict=True))}

    def stored_numbers(self) -> int:
        return int(sum(int(getattr(self, f"mask{i}").sum()) for i in range(len(self.w))))
