"""Fingerprints of reconstructed weights (checked within a tolerance) and exact state digests.

A bundle cannot carry a byte hash of its reconstruction: the generator's forward pass rounds
differently on different devices. It carries, per floating-point tensor, ``[l2, sum, s_0..s_7]``
(float64 statistics of the float32 reconstruction and 8 values at PRNG-chosen positions), which
any reader checks with the tolerance of ``check_tensor``. Exact identity of *inputs* (a delta's
base) uses ``state_digest``, a sha256 over names, dtypes, shapes and bytes.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mcnc_core import prng
from mcnc_core.errors import BaseMismatchError, FingerprintMismatchError
from mcnc_core.safetensors_io import TORCH_TO_DTYPE, tensor_bytes

__all__ = [
    "FINGERPRINT_ALGORITHM",
    "FINGERPRINT_RTOL",
    "check_tensor",
    "sample_indices",
    "state_digest",
    "tensor_fingerprint",
]

FINGERPRINT_ALGORITHM = "mcnc-fp-v1"
FINGERPRINT_SEED = 0x6D636E63  # "mcnc"
N_SAMPLES = 8
# Relative tolerance for float32 reconstructions; lower-precision outputs use their epsilon.
FINGERPRINT_RTOL = 1e-4


def sample_indices(index: int, numel: int) -> np.ndarray:
    """``N_SAMPLES`` flat positions for the tensor at manifest position ``index``.

    Position ``j`` is ``(w[2j] | w[2j+1] << 32) % numel`` over words of stream ``index`` under
    ``FINGERPRINT_SEED``.
    """
    words = prng.random_uint32(FINGERPRINT_SEED, index, 2 * N_SAMPLES).astype(np.uint64)
    return ((words[0::2] | (words[1::2] << np.uint64(32))) % np.uint64(max(numel, 1))).astype(np.int64)


def tensor_fingerprint(t: Tensor, index: int) -> list[float]:
    """``[l2, sum, s_0, ..., s_7]`` of a floating tensor, statistics accumulated in float64."""
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return [0.0, 0.0] + [0.0] * N_SAMPLES
    sq, total = _sums(flat)
    idx = torch.from_numpy(sample_indices(index, flat.numel())).to(flat.device)
    samples = flat[idx].to(torch.float64).tolist()
    # 9 significant digits: far inside the 1e-4 tolerance, and half the header bytes of repr().
    return [float(f"{v:.9g}") for v in (math.sqrt(sq), total, *samples)]


_BLOCK = 1 << 16


def _sums(flat: Tensor) -> tuple[float, float]:
    """``(Σx², Σx)``: float32 (or the tensor's dtype) partials over blocks of 65536, combined in
    float64 — relative error ~1e-7, far inside the tolerance, without a float64 copy of the tensor."""
    n = flat.numel()
    m = n - n % _BLOCK
    head = flat[:m].view(-1, _BLOCK).float() if m else flat[:0].float().view(0, 1)
    tail = flat[m:].to(torch.float64)
    sq = float(torch.linalg.vector_norm(head, dim=1).double().square().sum()) + float(tail.square().sum())
    total = float(head.sum(dim=1).double().sum()) + float(tail.sum())
    return sq, total


def check_tensor(name: str, t: Tensor, index: int, expected: list[float]) -> None:
    """Check ``t`` against its fingerprint.

    Tolerance, with ``rel = max(FINGERPRINT_RTOL, eps(t.dtype))``, ``n = numel`` and
    ``rms = l2 / sqrt(n)``: ``|Δl2| <= rel*l2``; ``|Δsum| <= rel*sqrt(n)*l2``;
    ``|Δs_i| <= rel*(|s_i| + rms)``. (``|Δsum|`` is bounded by ``rel * Σ|x_i| <= rel*sqrt(n)*l2``.)

    Raises:
        FingerprintMismatchError: naming the tensor, the statistic and both values.
    """
    got = tensor_fingerprint(t, index)
    n = max(t.numel(), 1)
    rel = max(FINGERPRINT_RTOL, torch.finfo(t.dtype).eps)
    l2 = expected[0]
    rms = l2 / math.sqrt(n)
    bounds = [rel * l2, rel * math.sqrt(n) * l2] + [rel * (abs(s) + rms) for s in expected[2:]]
    labels = ["l2", "sum"] + [f"sample {i}" for i in range(N_SAMPLES)]
    for label, g, e, b in zip(labels, got, expected, bounds, strict=True):
        if not abs(g - e) <= b + 1e-30:
            raise FingerprintMismatchError(
                f"tensor {name!r}: {label} is {g!r}, the bundle's fingerprint says {e!r} (tolerance {b:.3g})"
            )


def state_digest(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> str:
    """sha256 identifying a set of tensors exactly, independent of any file format.

    For each tensor in ascending name order: ``name`` (UTF-8), ``\\0``, dtype code (``"F32"``),
    ``\\0``, shape as comma-separated decimals, ``\\0``, the 8-byte little-endian byte length,
    then the little-endian bytes.
    """
    items = sorted(tensors.items() if isinstance(tensors, Mapping) else tensors, key=lambda kv: kv[0])
    h = hashlib.sha256()
    for name, t in items:
        _digest_update(h, name, t)
    return h.hexdigest()


def state_digest_file(path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """``state_digest`` of a safetensors file's tensors, reading one tensor at a time.

    Returns:
        ``(digest, number of tensors, number of parameters)``.

    Raises:
        BaseMismatchError: a tensor has a dtype bundles cannot store.
        Exception: whatever ``safetensors`` raises for a malformed file.
    """
    from safetensors import safe_open

    h = hashlib.sha256()
    n_params = 0
    with safe_open(os.fspath(path), framework="pt") as f:
        names = sorted(f.keys())
        for name in names:
            t = f.get_tensor(name)
            _digest_update(h, name, t)
            n_params += t.numel()
    return h.hexdigest(), len(names), n_params


def _digest_update(h: Any, name: str, t: Tensor) -> None:
    if t.dtype not in TORCH_TO_DTYPE:
        raise BaseMismatchError(f"tensor {name!r} has dtype {t.dtype}, which bundles cannot store")
    data = tensor_bytes(t)
    h.update(name.encode() + b"\0" + TORCH_TO_DTYPE[t.dtype].encode() + b"\0")
    h.update(",".join(map(str, t.shape)).encode() + b"\0" + len(data).to_bytes(8, "little"))
    h.update(data)
