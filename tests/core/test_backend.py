"""Device backends: the same weights as ``reconstruct``, handed over in host memory, with no
process-wide setting flipped per tensor. CUDA cases run where a GPU is (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch

import mcnc_core as m
from mcnc_core.backend import exact_float32
from tests.conftest import make_mlp

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def bundle(tiny_cfg) -> m.Bundle:
    return m.export_bundle(m.compress(make_mlp(), tiny_cfg))


def test_backend_for_picks_the_device():
    assert isinstance(m.backend_for("cpu"), m.CPUBackend)
    want = m.CUDABackend if torch.cuda.is_available() else m.CPUBackend
    assert isinstance(m.backend_for("auto"), want)
    with pytest.raises(m.ConfigError, match="device"):
        m.backend_for("tpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(m.DeviceUnavailableError):
            m.backend_for("cuda")


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_cpu_backend_yields_what_reconstruct_does(bundle, dtype):
    want = m.reconstruct(bundle, dtype=dtype)
    got = list(m.CPUBackend().reconstruct(bundle, dtype=dtype, verify=True))
    assert [n for n, _ in got] == list(want)
    for name, t in got:
        assert t.device.type == "cpu" and torch.equal(t, want[name]), name


def test_no_precision_flip_when_the_process_runs_full_float32(bundle, monkeypatch):
    """PyTorch's default is full float32: reconstructing must not touch the process-wide setting
    (worker threads flipping it around every tensor raced each other and the caller)."""
    assert torch.get_float32_matmul_precision() == "highest"

    def refuse(_: str) -> None:
        raise AssertionError("set_float32_matmul_precision called during a reconstruction")

    monkeypatch.setattr(torch, "set_float32_matmul_precision", refuse)
    m.reconstruct(bundle)
    list(m.CPUBackend().reconstruct(bundle))


def test_a_lowered_precision_is_raised_for_the_call_and_restored():
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with exact_float32():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


@cuda
@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_cuda_backend_hands_over_pinned_host_tensors_equal_to_the_device_ones(bundle, dtype):
    backend = m.CUDABackend("cuda")
    want = m.reconstruct(bundle, device="cuda", dtype=dtype)
    got = list(backend.reconstruct(bundle, dtype=dtype, verify=True))
    assert [n for n, _ in got] == list(want)
    for name, t in got:
        assert t.device.type == "cpu" and t.is_pinned(), name
        assert torch.equal(t, want[name].cpu()), name  # bit for bit: a copy, not a recomputation


@cuda
def test_cuda_backend_overlaps_and_survives_concurrent_callers(bundle):
    from concurrent.futures import ThreadPoolExecutor

    backend = m.CUDABackend("cuda")
    want = {n: t.cpu() for n, t in m.reconstruct(bundle, device="cuda").items()}

    def run(_: int) -> bool:
        return all(torch.equal(t, want[n]) for n, t in backend.reconstruct(bundle))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(8)))
