"""Golden vectors: the PRNG and generator weights must never change, on any platform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcnc_core import prng
from mcnc_core.generator import Generator, GeneratorSpec, generator_sha256, generator_weights


@pytest.mark.parametrize(
    ("counter", "key", "expected"),
    [  # Known-answer tests of Philox4x32-10 from Random123 (kat_vectors).
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    out = prng.philox4x32(np.array([counter]), key)
    assert tuple(int(x) for x in out[0]) == expected


def test_stream_golden_values():
    assert [int(x) for x in prng.random_uint32(0, 0, 6)] == [
        0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8, 0xF8E4CCA4, 0x5CB200DB,
    ]  # fmt: skip
    assert [int(x) for x in prng.random_uint32(2**64 - 1, 7, 5, offset=3)] == [
        0xC35B3354, 0x805CD421, 0x103B6AE1, 0xD4EA23DA, 0xC07910E5,
    ]  # fmt: skip
    assert prng.uniform_symmetric(42, 1, 5, 0.125).tolist() == [
        -0.12248529493808746, -0.09343753755092621, -0.06698346138000488, 0.052903175354003906, -0.09277509152889252,
    ]  # fmt: skip
    assert prng.uniform(123456789, 3, 4).tolist() == [
        0.6896849870681763, 0.36194396018981934, 0.2558709383010864, 0.39881426095962524,
    ]  # fmt: skip


def test_offsets_are_consistent_with_the_stream():
    whole = prng.random_uint32(99, 5, 40)
    for offset in (0, 1, 3, 4, 17):
        np.testing.assert_array_equal(prng.random_uint32(99, 5, 10, offset=offset), whole[offset : offset + 10])


def test_uniforms_are_exact_multiples_of_2_pow_minus_24():
    u = prng.uniform(1, 0, 1000).astype(np.float64)
    assert ((u * 2**24) == np.round(u * 2**24)).all() and u.min() >= 0 and u.max() < 1


@pytest.mark.parametrize("bad", [(-1, 0), (2**64, 0), (0, -1), (0, 2**32)])
def test_out_of_range_seed_or_stream(bad):
    with pytest.raises(ValueError, match="must be in"):
        prng.random_uint32(bad[0], bad[1], 4)


@pytest.mark.parametrize(
    ("spec", "sha", "first_w1", "first_wout"),
    [
        (
            GeneratorSpec(k=8, chunk_size=1024, width=64, depth=2, bound=10.0, seed=0),
            "88289f4b08a5f8356e1b10c0859a4189f7ecbd81ca702229cab7cf1a97b45ac9",
            [-0.025238394737243652, 0.09513004124164581, 0.05892819166183472],
            [0.27302879095077515, 0.036125894635915756],
        ),
        (
            GeneratorSpec(k=4, chunk_size=64, width=16, depth=1, bound=5.0, seed=2**63 + 5),
            "587c41a05e6e4981e0a4af776f81784587a431e430ef7840f8187e1a1674dd90",
            [0.23535287380218506, -0.24446505308151245, -0.10520339012145996],
            [-0.526467502117157, 0.08646885305643082],
        ),
    ],
)
def test_generator_weights_golden(spec, sha, first_w1, first_wout):
    w = generator_weights(spec)
    assert generator_sha256(spec) == sha
    assert w[0].reshape(-1)[:3].tolist() == first_w1
    assert w[-1].reshape(-1)[:2].tolist() == first_wout
    assert [a.shape for a in w] == spec.shapes


def test_generator_is_frozen_and_never_in_state_dict():
    gen = Generator(GeneratorSpec(k=4, chunk_size=64, width=16, depth=2, bound=5.0, seed=1))
    assert list(gen.parameters()) == []
    assert gen.state_dict() == {}
    gen.half()  # the spec fixes the dtypes; model.half() must not change them
    assert gen.w_out_t.dtype == torch.float32 and gen.w0.dtype == torch.float32


def test_phi_lies_on_the_unit_sphere():
    gen = Generator(GeneratorSpec(k=4, chunk_size=64, width=16, depth=2, bound=5.0, seed=1))
    alpha = torch.empty(50, 4).uniform_(-5, 5)
    out = gen.decode(alpha, torch.full((50,), 3.0))
    torch.testing.assert_close(out.norm(dim=1), torch.full((50,), 3.0), rtol=1e-5, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generator_cpu_equals_gpu_weights():
    spec = GeneratorSpec(k=8, chunk_size=256, width=32, depth=2, bound=10.0, seed=3)
    cpu, gpu = Generator(spec), Generator(spec).cuda()
    for (name, a), (_, b) in zip(cpu.named_buffers(), gpu.named_buffers(), strict=True):
        assert torch.equal(a, b.cpu()), name
