"""Post-training uniform quantization of a trained dense model (weights only; biases stay float32).

Per tensor, symmetric: ``scale = max|w| / (2^(b-1) - 1)``, ``q = round(w / scale)``. Stored:
``b`` bits per weight plus one float32 scale per tensor.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from benchmarks.baselines.common import target_weights

__all__ = ["quantize_model"]


@torch.no_grad()
def quantize_model(net: nn.Module, bits: int) -> tuple[nn.Module, int]:
    """A quantized copy of ``net`` and the stored bytes of its quantized weights."""
    q = copy.deepcopy(net)
    levels = 2 ** (bits - 1) - 1
    nbits = 0
    for p in target_weights(q).values():
        scale = p.abs().max().clamp_min(1e-12) / levels
        p.copy_(torch.round(p / scale).clamp(-levels, levels) * scale)
        nbits += p.numel() * bits + 32
    return q, (nbits + 7) // 8
