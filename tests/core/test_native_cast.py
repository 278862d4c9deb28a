"""The native float32 -> float16/bfloat16 rounding (mcnc_core/_kernels.c) is torch's, bit for bit.

A wide sweep runs always: every sign and exponent with the mantissas where rounding decides
(around each half-way point of both formats, the lowest and highest bits), every special value,
and odd lengths and offsets for the kernel's tails. ``MCNC_EXHAUSTIVE_CAST=1`` also checks all
2**32 bit patterns (about two minutes on 2 cores; run for docs/benchmarks.md).
"""

from __future__ import annotations

import os

import pytest
import torch

from mcnc_core.generator import _kernels

pytestmark = pytest.mark.skipif(
    _kernels is None or not _kernels.gemm_available(), reason="needs the native kernels (AVX-512F)"
)
KINDS = {torch.float16: 1, torch.bfloat16: 2}


def _native(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(x.numel(), dtype=dtype)
    _kernels.cast(out.data_ptr(), x.data_ptr(), x.numel(), KINDS[dtype])
    return out


def _wide_patterns() -> torch.Tensor:
    # mantissa bits where float16 (13 dropped bits) and bfloat16 (16 dropped bits) round
    low = torch.arange(0, 1 << 12)
    mant = set(low.tolist())  # float32 denormals and the smallest mantissas
    for half in (1 << 12, 1 << 15):  # the half-way bit of each format
        for m in range(0, 1 << 23, half * 2 if half == 1 << 15 else half * 64):
            mant.update(m + half + d for d in (-1, 0, 1))
            mant.update(m + 2 * half + d for d in (-1, 0, 1))
    mant.update(range((1 << 23) - 4096, 1 << 23))  # the largest mantissas (carry into the exponent)
    m = torch.tensor(sorted(x for x in mant if 0 <= x < 1 << 23), dtype=torch.int64)
    exp = torch.arange(0, 512, dtype=torch.int64)  # sign and exponent, NaN and inf included
    bits = (exp[:, None] << 23) | m[None, :]
    return bits.reshape(-1).to(torch.int32).view(torch.float32)  # int64 -> int32 wraps the sign bit in


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_exponent_and_rounding_boundary_rounds_as_torch(dtype: torch.dtype) -> None:
    x = _wide_patterns()
    assert x.numel() > 1_000_000
    got = _native(x, dtype)
    want = x.to(dtype)
    bad = (got.view(torch.int16) != want.view(torch.int16)).nonzero()
    assert bad.numel() == 0, [hex(int(x.view(torch.int32)[i]) & 0xFFFFFFFF) for i in bad[:5, 0]]
    copied = torch.empty_like(got)
    copied.copy_(x)  # the decoder's other path (copy_ into an output) rounds the same way
    assert torch.equal(got.view(torch.int16), copied.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_specials_denormals_and_overflow(dtype: torch.dtype) -> None:
    vals = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"), 65504.0, 65520.0, 65519.996,
            6e-8, 2.98e-8, 5.96e-8, -1e-45, 1e-40, 3.4e38, -3.4e38, 1.0 + 2**-11, 1.0 + 2**-8]  # fmt: skip
    x = torch.tensor(vals * 3, dtype=torch.float32)  # the vector body and the tail
    payloads = torch.tensor([0x7F800001, 0x7FA00000, 0x7FFFFFFF, -0x7EDCBA9, -1], dtype=torch.int32)
    x = torch.cat([x, payloads.view(torch.float32).repeat(4)])
    assert torch.equal(_native(x, dtype).view(torch.int16), x.to(dtype).view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tails_and_unaligned_addresses(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    src = torch.randn(200, generator=g) * 1e3
    for offset in (0, 1, 7, 16):
        for n in (0, 1, 15, 16, 17, 33, 100):
            x = src[offset : offset + n]
            out = torch.full((n + 2,), 7.0, dtype=dtype)
            _kernels.cast(out[1:].data_ptr(), x.data_ptr(), n, KINDS[dtype])
            assert torch.equal(out[1 : n + 1], x.to(dtype)), (offset, n)
            assert out[0] == 7 and out[n + 1] == 7  # nothing written outside


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 64, 1024), (7, 64, 1000), (13, 8, 77), (64, 64, 2048)])
def test_gemm_rounding_in_registers_equals_gemm_then_cast(dtype, m, k, n) -> None:
    """The fused output (``out_kind``) is the float32 GEMM cast by torch, tails and overflow included."""
    g = torch.Generator().manual_seed(m * n)
    a = torch.randn(m, k, generator=g) * torch.logspace(-12, 4, m)[:, None]  # denormal to overflowing rows
    b = torch.randn(k, n, generator=g).contiguous()
    ref = torch.empty(m, n)
    _kernels.gemm(a.data_ptr(), b.data_ptr(), ref.data_ptr(), m, k, n, k, n, False)
    for stream in (False, True):
        out = torch.empty(m, n + 3, dtype=dtype)  # a row stride beyond n
        _kernels.gemm(a.data_ptr(), b.data_ptr(), out.data_ptr(), m, k, n, k, n + 3, stream, KINDS[dtype])
        assert torch.equal(out[:, :n].view(torch.int16), ref.to(dtype).view(torch.int16))


def test_bad_kind_is_refused() -> None:
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="out_kind"):
        _kernels.cast(x.data_ptr(), x.data_ptr(), 4, 0)
    with pytest.raises(ValueError, match="out_kind"):
        _kernels.gemm(x.data_ptr(), x.data_ptr(), x.data_ptr(), 1, 1, 1, 1, 1, False, 3)


@pytest.mark.skipif(os.environ.get("MCNC_EXHAUSTIVE_CAST") != "1", reason="set MCNC_EXHAUSTIVE_CAST=1 (~2 min)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_all_float32_bit_patterns(dtype: torch.dtype) -> None:
    step = 1 << 24
    out = torch.empty(step, dtype=dtype)
    for start in range(0, 1 << 32, step):
        x = torch.arange(start, start + step, dtype=torch.int64).to(torch.int32).view(torch.float32)
        _kernels.cast(out.data_ptr(), x.data_ptr(), step, KINDS[dtype])
        assert torch.equal(out.view(torch.int16), x.to(dtype).view(torch.int16)), hex(start)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("shape", "rank"), [((96, 80), 4), ((4096, 4096), 16), ((700, 300), 8)])
def test_adapter_factors_in_half_precision_equal_the_cast_of_training(shape, rank, dtype, threads) -> None:
    """Adapter export's factors (``decode_factors_as``) are training's factors cast by torch."""
    from mcnc_core.decode import decode_factors, decode_factors_as
    from mcnc_core.generator import Generator, GeneratorSpec
    from mcnc_core.manifest import factor_shapes

    spec = GeneratorSpec(k=8, chunk_size=1024, width=64, depth=2, bound=10.0, seed=0)
    factors = factor_shapes(shape, rank)
    n = sum(-(-torch.Size(f).numel() // spec.chunk_size) for f in factors)
    g = torch.Generator().manual_seed(n)
    alpha, beta = (torch.rand(n, spec.k, generator=g) * 2 - 1) * spec.bound, torch.rand(n, generator=g) + 0.1
    gen = Generator(spec)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = [f.detach().to(dtype) for f in decode_factors(gen, alpha.requires_grad_(), beta, factors)]
        got = decode_factors_as(gen, alpha.detach(), beta, factors, dtype)
    finally:
        torch.set_num_threads(previous)
    assert [tuple(t.shape) for t in got] == [tuple(f) for f in factors]
    assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(got, want, strict=True))
