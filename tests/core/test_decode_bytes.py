"""``decode_bytes`` / ``peak_decode_bytes``: what a decode really allocates, factors included, and the
reader's bound on factor sizes (issue 19 N1: a 9 KB bundle at rank 4096 decoding 4 GiB of factors)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcnc_core as m
from mcnc_core.bundle import Bundle
from mcnc_core.manifest import TensorEntry, decode_bytes


def rank_bomb(rank: int = 4096, cols: int = 262144) -> bytes:
    """A valid bundle of one ``(1, cols)`` float32 tensor (1 MiB) at ``rank``: ``(1 + cols) * rank``
    generated factor numbers (4 GiB at the defaults) from 1,025 one-number codes (9,312 bytes)."""
    cfg = m.MCNCConfig(chunk_size=2**20, k=1, width=1, depth=1, rank=rank, mode="full")
    spec = cfg.generator_spec()
    probe = TensorEntry("w.weight", (1, cols), "F32", "mcnc", rank, 0, 0)
    n = probe.chunks_needed(spec.chunk_size)
    entry = TensorEntry("w.weight", (1, cols), "F32", "mcnc", rank, 0, n)
    fp = {"w.weight": [0.0] * 10}
    return Bundle(spec, cfg, (entry,), torch.zeros(n, 1), torch.zeros(n), {}, None, fp).to_bytes()


def test_the_rank_bomb_is_small_and_counted_in_full():
    data = rank_bomb()
    assert len(data) < 10_000
    bundle = m.load_bundle(data)  # within the library's default limits (2**34 numbers)
    assert bundle.num_params == 262144  # what the old limits counted: 1 MiB
    # blocks + their concatenation: 2 x 1025 chunks x 2**20 float32, the product, the output
    assert m.peak_decode_bytes(bundle) == 2 * 1025 * 2**20 * 4 + 2 * 262144 * 4
    assert m.peak_decode_bytes(bundle) > 8 << 30


def test_the_reader_refuses_factor_sizes_over_its_limit_naming_the_bound():
    with pytest.raises(m.BundleLimitError, match=r"rank 4096 decodes 1073745920 .*max_factor_params"):
        m.load_bundle(rank_bomb(), limits=m.ReadLimits(max_factor_params=2**28))
    # by default the bound is max_tensor_params
    with pytest.raises(m.BundleLimitError, match="max_factor_params"):
        m.load_bundle(rank_bomb(), limits=m.ReadLimits(max_tensor_params=2**29))


def test_decode_bytes_by_storage_and_dtype():
    full = TensorEntry("a", (64, 32), "F32", "mcnc", 0, 0, 2)
    assert decode_bytes(full) == 64 * 32 * 4  # straight into the output
    assert decode_bytes(full, torch.float16) == 64 * 32 * (2 + 4)  # + the float32 scratch
    assert decode_bytes(full, "BF16") == decode_bytes(full, torch.bfloat16)
    low = TensorEntry("b", (64, 32), "F32", "mcnc", 4, 0, 1)
    factors = (64 + 32) * 4
    assert low.factor_params == factors
    assert decode_bytes(low) == 2 * factors * 4 + 2 * 64 * 32 * 4
    assert decode_bytes(low, chunk_size=1024) == 2 * 1024 * 4 + 2 * 64 * 32 * 4  # whole chunks
    # delta mode: the base tensor as read and the float32 sum with it
    assert decode_bytes(low, delta=True) == decode_bytes(low) + 64 * 32 * 4 + 64 * 32 * 4
    raw = TensorEntry("c", (10,), "I64", "raw")
    assert decode_bytes(raw, torch.float16) == 80  # dtype applies to floating tensors only
    base = TensorEntry("d", (10,), "BF16", "base")
    assert decode_bytes(base, delta=True) == 20 + 20


def test_peak_decode_bytes_of_a_real_bundle_is_its_largest_tensor():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.Linear(64, 8))
    m.compress(net, m.MCNCConfig(chunk_size=64, k=4, width=16, rank=2))
    bundle = m.export_bundle(net)
    each = [decode_bytes(e, chunk_size=64) for e in bundle.manifest]
    assert m.peak_decode_bytes(bundle) == max(each)
    assert m.peak_decode_bytes(bundle) >= max(e.numel * 4 for e in bundle.manifest)
