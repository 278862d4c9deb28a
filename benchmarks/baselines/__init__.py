"""Baselines for ``benchmarks/accuracy.py`` (not part of the library).

Every method reparameterises the *weights* of a model's Linear/Conv layers (the same tensors
MCNC compresses by default); biases stay raw and are trained by every method alike. All of them
train through :func:`benchmarks.baselines.common.train`, the loop MCNC uses too.
"""

from __future__ import annotations

from benchmarks.baselines.common import Reparam, accuracy, target_weights, train
from benchmarks.baselines.lora import LowRank
from benchmarks.baselines.nola import NOLA
from benchmarks.baselines.pranc import PRANC
from benchmarks.baselines.pruning import MagnitudePruned
from benchmarks.baselines.quantization import quantize_model

__all__ = [
    "NOLA",
    "PRANC",
    "LowRank",
    "MagnitudePruned",
    "Reparam",
    "accuracy",
    "quantize_model",
    "target_weights",
    "train",
]
