"""Reconstruction decodes exactly what training decodes, whatever the thread count."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mcnc_core.decode import decode_tensor, decode_tensor_into
from mcnc_core.generator import Generator, GeneratorSpec, generator_sha256
from mcnc_core.manifest import factor_shapes

ROOT = Path(__file__).resolve().parents[2]
SPEC = GeneratorSpec(k=8, chunk_size=1024, width=64, depth=2, bound=10.0, seed=0)
# (shape, rank): multiples of chunk_size, ragged tails, several blocks, low rank
CASES = [((64, 64), 0), ((300, 7), 0), ((1000, 1000), 0), ((513, 1031), 0), ((96, 80), 4), ((700, 300), 8)]


def _codes(shape: tuple[int, ...], rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    factors = factor_shapes(shape, rank)
    n = sum(-(-torch.Size(f).numel() // SPEC.chunk_size) for f in factors)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, SPEC.k, generator=g) * 2 - 1) * SPEC.bound, torch.rand(n, generator=g) + 0.1, factors


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("shape", "rank"), CASES)
def test_training_and_reconstruction_paths_equal(shape: tuple[int, ...], rank: int, threads: int) -> None:
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, rank, seed=sum(shape) + rank)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = alpha.clone().requires_grad_(), beta.clone().requires_grad_()
        trained = decode_tensor(gen, a, b, shape, factors)  # autograd path
        trained.sum().backward()  # and it is differentiable
        out = torch.empty(shape)
        decode_tensor_into(gen, alpha, beta, shape, factors, out)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(trained.detach(), out)
    assert a.grad is not None and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(64, 64), (513, 1031), (1000, 1000)])
def test_delta_reconstruction_equals_training(shape: tuple[int, ...], base_dtype: torch.dtype, threads: int) -> None:
    """Delta tensors take the block-parallel path too (regression: they used the serial training
    path, ~5-10x slower) and still equal ``base + delta`` as training computes it, bit for bit."""
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, 0, seed=sum(shape))
    base = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(base_dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trained = decode_tensor(gen, alpha, beta, shape, factors, base)
        out = torch.empty(shape)
        decode_tensor_into(gen, alpha, beta, shape, factors, out, base)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(trained, out)
    assert not torch.equal(out, base.float())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("shape", [(300, 7), (513, 1031), (1000, 1000)])
def test_cast_outputs_equal_the_cast_of_training(shape, with_base, dtype, threads) -> None:
    """Non-float32 outputs are cast block by block in the parallel path: exactly the cast of
    training's float32 weights (base added in float32 first)."""
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, 0, seed=sum(shape) + 7)
    base = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype) if with_base else None
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trained = decode_tensor(gen, alpha, beta, shape, factors, base)
        out = torch.empty(shape, dtype=dtype)
        decode_tensor_into(gen, alpha, beta, shape, factors, out, base)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out, trained.to(dtype))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(300, 7), (513, 1031), (1000, 1000)])
def test_a_base_that_is_the_output_itself(shape, out_dtype) -> None:
    """Applying a delta in place (``out`` holds the base, as ``reconstruct_into(model, base=model's
    own state)`` does) reads each base value before its slot is written."""
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, 0, seed=sum(shape) + 11)
    base = torch.randn(shape, generator=torch.Generator().manual_seed(6)).to(out_dtype)
    expected = decode_tensor(gen, alpha, beta, shape, factors, base).to(out_dtype)
    out = base.clone()
    decode_tensor_into(gen, alpha, beta, shape, factors, out, out)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("offset", [1, 3000, -3000])
def test_a_base_overlapping_the_output_elsewhere(offset) -> None:
    """Base and output in one buffer at different offsets: the base is read as it was."""
    shape = (1000, 1000)
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, 0, seed=13)
    n = shape[0] * shape[1]
    buf = torch.randn(n + abs(offset), generator=torch.Generator().manual_seed(8))
    out_at, base_at = (offset, 0) if offset > 0 else (0, -offset)
    out, base = buf[out_at : out_at + n].view(shape), buf[base_at : base_at + n].view(shape)
    expected = decode_tensor(gen, alpha, beta, shape, factors, base.clone())
    decode_tensor_into(gen, alpha, beta, shape, factors, out, base)
    assert torch.equal(out, expected)


_CHILD = textwrap.dedent(
    """
    import hashlib, sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    from mcnc_core.decode import decode_tensor_into
    from mcnc_core.generator import Generator, GeneratorSpec
    gen = Generator(GeneratorSpec(k=8, chunk_size=1024, width=64, depth=2, bound=10.0, seed=0))
    g = torch.Generator().manual_seed(1)
    h = hashlib.sha256()
    for shape in [(1000, 1000), (513, 1031), (4096, 300)]:
        n = -(-shape[0] * shape[1] // 1024)
        alpha, beta = torch.rand(n, 8, generator=g) * 20 - 10, torch.rand(n, generator=g) + 0.1
        out = torch.empty(shape)
        decode_tensor_into(gen, alpha, beta, shape, (shape,), out)
        h.update(out.numpy().tobytes())
    print(h.hexdigest())
    """
)


def test_reconstruction_independent_of_thread_count() -> None:
    digests = {
        t: subprocess.run(
            [sys.executable, "-c", _CHILD, str(t)], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        for t in (1, 2)
    }
    assert digests[1] == digests[2] and len(digests[1].strip()) == 64


def test_generator_weights_unchanged() -> None:
    # pinned before the reconstruction speed work; the generator must never change
    assert generator_sha256(SPEC) == "88289f4b08a5f8356e1b10c0859a4189f7ecbd81ca702229cab7cf1a97b45ac9"


def test_no_grad_scaled_hidden_matches_reference_formula() -> None:
    """The in-place no-grad path gives the bits of the plain formula (so old bundles are unchanged)."""
    gen = Generator(SPEC)
    alpha, beta, _ = _codes((2000, 1000), 0, seed=3)
    x = alpha
    for i in range(SPEC.depth):
        x = torch.sin(torch.addmm(getattr(gen, f"b{i}"), x, getattr(gen, f"w{i}").t()))
    expected = x * (beta * torch.rsqrt(((x @ gen.gram) * x).sum(dim=1).clamp_min(1e-30)))[:, None]
    with torch.no_grad():
        assert torch.equal(gen.scaled_hidden(alpha, beta), expected)


def _decode_in_child(q) -> None:  # type: ignore[no-untyped-def]
    gen = Generator(SPEC)
    alpha, beta, factors = _codes((1000, 1000), 0, seed=7)
    out = torch.empty(1000, 1000)
    decode_tensor_into(gen, alpha, beta, (1000, 1000), factors, out)
    q.put(out.numpy().tobytes())  # no torch op here: GNU OpenMP regions can hang in a forked child


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_decode_pool_survives_fork() -> None:
    import multiprocessing as mp

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = Generator(SPEC)
        alpha, beta, factors = _codes((1000, 1000), 0, seed=7)
        out = torch.empty(1000, 1000)
        decode_tensor_into(gen, alpha, beta, (1000, 1000), factors, out)  # parent creates its pool
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        child = ctx.Process(target=_decode_in_child, args=(q,))
        child.start()
        value = q.get(timeout=60)  # a child reusing the parent's (threadless) pool would hang here
        child.join(timeout=60)
    finally:
        torch.set_num_threads(previous)
    assert value == out.numpy().tobytes()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's forward_ad import
def test_output_gemm_gradients_and_forward_mode_match_a_plain_matmul():
    # The output layer may run through oneDNN on CPU (a custom autograd Function): its backward and
    # forward-mode derivative must be those of hs @ W_outᵀ.
    import torch.autograd.forward_ad as fwAD

    from mcnc_core.generator import Generator, GeneratorSpec

    gen = Generator(GeneratorSpec(k=4, chunk_size=300, width=16, depth=2, bound=5.0, seed=2))
    hs = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(40, 300)
    (gen.output(hs) * weight).sum().backward()
    torch.testing.assert_close(hs.grad, weight @ gen.w_out_t.t(), rtol=1e-5, atol=1e-5)
    tangent = torch.randn(40, 16)
    with fwAD.dual_level():
        dual = fwAD.make_dual(hs.detach(), tangent)
        out_tangent = fwAD.unpack_dual(gen.output(dual)).tangent
    torch.testing.assert_close(out_tangent, tangent @ gen.w_out_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gen.output(hs.detach()), hs.detach() @ gen.w_out_t, rtol=1e-6, atol=1e-6)


def test_decode_workers_do_not_keep_the_last_output_alive() -> None:
    """Issue 11 D5: an idle worker held its last task (the closure over ``out``) until its next one,
    so the last tensor a server streamed stayed resident for good (321 -> 1,420 MB RSS)."""
    import gc
    import weakref

    gen = Generator(SPEC)
    alpha, beta, factors = _codes((1000, 1000), 0, seed=5)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = torch.empty(1000, 1000)
        decode_tensor_into(gen, alpha, beta, (1000, 1000), factors, out)
        ref = weakref.ref(out)
        del out
        gc.collect()
    finally:
        torch.set_num_threads(previous)
    assert ref() is None, "a decode worker still references the output it wrote"


def _gemm_kinds() -> list[str]:
    from mcnc_core import generator

    kinds = ["mkl"]  # torch.mm: always there
    if generator._ONEDNN_LINEAR:
        kinds.append("onednn")
    if generator._kernels is not None and generator._kernels.gemm_available():
        kinds.append("native")
    return kinds


@pytest.mark.parametrize("kind", _gemm_kinds())
@pytest.mark.parametrize(("shape", "rank"), [((1000, 1000), 0), ((513, 1031), 0), ((700, 300), 8), ((300, 7), 0)])
def test_every_cpu_gemm_kernel_keeps_training_and_reconstruction_equal(monkeypatch, kind, shape, rank) -> None:
    """Each machine uses one output-GEMM kernel (native with AVX-512F, else MKL on Intel, else
    oneDNN); whichever it is, training and reconstruction give the same bits at any thread count,
    and the values are those of a float64 reference to float32 accuracy."""
    from mcnc_core import generator

    monkeypatch.setattr(generator, "_CPU_GEMM", kind)
    gen = Generator(SPEC)
    alpha, beta, factors = _codes(shape, rank, seed=7)
    trained = decode_tensor(gen, alpha.clone().requires_grad_(), beta.clone().requires_grad_(), shape, factors)
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty(shape)
            decode_tensor_into(gen, alpha, beta, shape, factors, out)
            assert torch.equal(trained.detach(), out), (kind, threads)
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setattr(generator, "_CPU_GEMM", None)  # one plain float32 matmul: a different kernel
    reference = decode_tensor(gen, alpha, beta, shape, factors)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_native_gemm_is_a_sequential_fma_chain() -> None:
    """The native kernel's contract: every element ``fma``-accumulated over k in order, so it does
    not depend on the tile, the row count or the output address (streaming or not)."""
    from mcnc_core import generator

    if generator._kernels is None or not generator._kernels.gemm_available():
        pytest.skip("the native kernel is not built or this CPU has no AVX-512F")
    k = generator._kernels
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 19, generator=g), torch.randn(19, 131, generator=g)
    ref = torch.zeros(37, 131, dtype=torch.float32)
    for p in range(19):  # one rounding per step: float32 fma emulated in float64 is exact here
        ref = (ref.double() + a[:, p : p + 1].double() * b[p : p + 1].double()).float()
    for stream in (False, True):
        out = torch.full((40, 160), float("nan"))  # wider rows: ldc > n, the padding stays untouched
        k.gemm(a.data_ptr(), b.data_ptr(), out.data_ptr(), 37, 19, 131, 19, 160, stream)
        assert torch.equal(out[:37, :131], ref) and out[:37, 131:].isnan().all() and out[37:].isnan().all()
        one = torch.empty(1, 131)
        k.gemm(a[5].contiguous().data_ptr(), b.data_ptr(), one.data_ptr(), 1, 19, 131, 19, 131, stream)
        assert torch.equal(one[0], ref[5])
    with pytest.raises(ValueError, match="lda"):
        k.gemm(a.data_ptr(), b.data_ptr(), out.data_ptr(), 37, 19, 131, 5, 160, False)
