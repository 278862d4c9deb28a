"""reconstruct(export_bundle(m)) reproduces the trained model: modes, ranks, dtypes, devices, threads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import mcnc_core as m
from mcnc_core.reconstruct import base_names
from tests.conftest import make_mlp, train_steps


def _cfg(base: m.MCNCConfig, **kw) -> m.MCNCConfig:
    return m.MCNCConfig(**{**base.to_dict(), **kw})


def _conv_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def _roundtrip(model: nn.Module, fresh: nn.Module, x: torch.Tensor, base=None) -> None:
    bundle = m.load_bundle(m.export_bundle(model).to_bytes())
    state = m.reconstruct(bundle, base=base, verify=True)
    fresh.load_state_dict(state, strict=True)
    adapter = any(mw.adapter for mw in model._mcnc_state.targets.values())
    with torch.no_grad():
        if adapter:  # trained as base(x) + x Bᵀ Aᵀ: the same factors, another order of float32 sums
            torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(fresh(x), model(x))  # same device: bit-identical
    # reconstruct_into: the same values, written into the model's own tensors
    ptrs = {n: t.data_ptr() for n, t in fresh.state_dict().items()}
    with torch.no_grad():
        for t in fresh.state_dict().values():
            t.zero_()
    m.reconstruct_into(bundle, fresh, base=base, verify=True)
    after = fresh.state_dict()
    assert {n: t.data_ptr() for n, t in after.items()} == ptrs
    assert all(torch.equal(after[n], state[n]) for n in state)
    with torch.no_grad():
        if not adapter:
            assert torch.equal(fresh(x), model(x))
    # The trained model's own weights, baked in, are the reconstructed ones bit for bit.
    baked = m.materialize(model).state_dict()
    assert all(torch.equal(baked[n], state[n]) for n in state)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("rank", [0, 3])
def test_full_mode_reproduces_outputs(tiny_cfg, rank):
    model = m.compress(make_mlp(), _cfg(tiny_cfg, rank=rank))
    train_steps(model)
    _roundtrip(model, make_mlp(seed=9), torch.randn(6, 16))


@pytest.mark.parametrize("rank", [0, 2])
def test_delta_mode_reproduces_outputs_given_the_base(tiny_cfg, rank):
    model = m.compress(make_mlp(), _cfg(tiny_cfg, mode="delta", rank=rank, trainable=("4.bias",), base_name="mlp"))
    train_steps(model)
    base = make_mlp().state_dict()  # the original pretrained weights, extra keys included
    _roundtrip(model, make_mlp(seed=9), torch.randn(6, 16), base=base)


def test_conv_with_low_rank(tiny_cfg):
    model = m.compress(_conv_net(), _cfg(tiny_cfg, rank=2))
    train_steps(model)
    _roundtrip(model, _conv_net(), torch.randn(2, 3, 8, 8))


def test_embedding_model(tiny_cfg):
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(40, 16), nn.Linear(16, 3))

    model = m.compress(net(), tiny_cfg)
    train_steps(model)
    _roundtrip(model, net(), torch.randint(0, 40, (4, 5)))


def test_half_precision_model_round_trips(tiny_cfg):
    model = m.compress(make_mlp(), tiny_cfg)
    train_steps(model)
    model.half()
    bundle = m.export_bundle(model)
    assert {e.dtype for e in bundle.manifest} == {"F16"}
    state = m.reconstruct(bundle, verify=True)
    fresh = make_mlp().half()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(3, 16).half()
    assert torch.equal(fresh(x), model(x))


def test_output_dtypes_and_iteration_order(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    bundle = m.export_bundle(tiny_mlp)
    ref = m.reconstruct(bundle)
    assert list(ref) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    for dtype in (torch.float16, torch.bfloat16):
        for verify in (True, False):  # decoded via a float32 scratch / cast block by block
            out = m.reconstruct(bundle, dtype=dtype, verify=verify)
            assert all(t.dtype == dtype for t in out.values())
            assert all(torch.equal(out[n], ref[n].to(dtype)) for n in ref)
    some = list(m.iter_reconstruct(bundle, names={"4.bias", "0.weight"}))
    assert [n for n, _ in some] == ["0.weight", "4.bias"]
    assert torch.equal(some[0][1], ref["0.weight"])


def test_delta_base_errors(tiny_cfg):
    model = m.compress(make_mlp(), _cfg(tiny_cfg, mode="delta"))
    train_steps(model)
    bundle = m.export_bundle(model)
    base = m.base_state_dict(model)
    assert base_names(bundle) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert m.state_digest(base) == bundle.base.sha256
    with pytest.raises(m.BaseMismatchError, match="needs its base"):
        m.reconstruct(bundle)
    with pytest.raises(m.BaseMismatchError, match="lacks 1 tensors"):
        m.reconstruct(bundle, base={k: v for k, v in base.items() if k != "2.bias"})
    with pytest.raises(m.BaseMismatchError, match=r"base tensor '2.bias' is F16"):
        m.reconstruct(bundle, base={**base, "2.bias": base["2.bias"].half()})
    other = make_mlp(seed=5).state_dict()
    with pytest.raises(m.BaseMismatchError, match="digest"):
        m.reconstruct(bundle, base=other)
    m.reconstruct(bundle, base=other, verify_base=False)  # the caller's choice


def test_verify_detects_tampered_codes_and_raw_tensors(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    train_steps(tiny_mlp)
    bundle = m.export_bundle(tiny_mlp)
    bundle.alpha[3, 0] += 0.5  # chunk 3 belongs to '0.weight'
    with pytest.raises(m.FingerprintMismatchError, match=r"'0\.weight'"):
        m.reconstruct(bundle, verify=True)
    bundle = m.export_bundle(tiny_mlp)
    bundle.raw["4.bias"][0] += 1e-2
    with pytest.raises(m.FingerprintMismatchError, match=r"'4\.bias'"):
        m.reconstruct(bundle, verify=True)


_THREADS_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
import mcnc_core as m
print(m.state_digest(m.reconstruct(m.load_bundle(sys.argv[1]))))
"""


def test_identical_reconstruction_across_processes_and_thread_counts(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1024, 1536), nn.Linear(1536, 1000), nn.Linear(1000, 64))
    m.compress(net, m.MCNCConfig(k=8, chunk_size=1000, width=64, depth=2, bound=10.0, seed=3))
    m.save_bundle(m.export_bundle(net), tmp_path / "b.mcnc")
    outs = [
        subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, str(tmp_path / "b.mcnc"), str(n)],
            capture_output=True, text=True, check=True,
        ).stdout
        for n in (1, 2)
    ]  # fmt: skip
    assert outs[0] == outs[1] == m.state_digest(m.reconstruct(m.load_bundle(tmp_path / "b.mcnc"))) + "\n"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree_within_the_fingerprint_tolerance(tiny_cfg):
    model = m.compress(make_mlp(), _cfg(tiny_cfg, rank=2))
    train_steps(model)
    bundle = m.export_bundle(model)
    cpu = m.reconstruct(bundle, verify=True)
    gpu = m.reconstruct(bundle, device="cuda", verify=True)
    for name, t in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), t, rtol=1e-4, atol=1e-6)
    model.cuda()
    x = torch.randn(4, 16)
    fresh = make_mlp().cuda()
    fresh.load_state_dict(m.reconstruct(bundle, device="cuda"), strict=True)
    assert torch.equal(fresh(x.cuda()), model(x.cuda()))
    # straight into a CUDA model (float32 and half), and decoded on CPU into a CUDA model
    into = make_mlp(seed=3).cuda()
    m.reconstruct_into(bundle, into, verify=True)
    assert torch.equal(into(x.cuda()), model(x.cuda()))
    half = make_mlp(seed=3).cuda().half()
    m.reconstruct_into(bundle, half)
    assert all(torch.equal(t, fresh.state_dict()[n].half()) for n, t in half.state_dict().items())
    m.reconstruct_into(bundle, into, device="cpu")
    assert all(torch.equal(t.cpu(), cpu[n]) for n, t in into.state_dict().items())
    # half-precision streams: cast block by block on the GPU, the cast of the float32 weights
    for n, t in m.iter_reconstruct(bundle, device="cuda", dtype=torch.float16):
        assert torch.equal(t, gpu[n].half())


def test_reconstruct_into_casts_and_handles_any_target_layout(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    train_steps(tiny_mlp)
    bundle = m.export_bundle(tiny_mlp)
    ref = m.reconstruct(bundle)
    for dtype in (torch.float16, torch.bfloat16):
        for verify in (False, True):
            fresh = make_mlp(seed=4).to(dtype)
            m.reconstruct_into(bundle, fresh, verify=verify)
            assert all(torch.equal(t, ref[n].to(dtype)) for n, t in fresh.state_dict().items())
    # a plain mapping whose tensors are not contiguous (transposed storage) and float64
    targets = {n: torch.empty(t.shape[::-1], dtype=torch.float64).t() for n, t in ref.items()}
    assert not targets["0.weight"].is_contiguous()
    m.reconstruct_into(bundle, targets, device="cpu", verify=True)
    assert all(torch.equal(targets[n], ref[n].double()) for n in ref)


def test_reconstruct_into_refuses_a_misfit_and_writes_nothing(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    bundle = m.export_bundle(tiny_mlp)
    other = make_mlp(seed=5, sizes=(16, 48, 32, 5))  # last layer differs in shape
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(m.ModelError, match=r"'4.weight' has shape \[5, 32\], the bundle's \[4, 32\]"):
        m.reconstruct_into(bundle, other)
    deeper = make_mlp(seed=5, sizes=(16, 48, 32, 32, 4))
    with pytest.raises(m.ModelError, match=r"missing keys \['6.bias', '6.weight'\], unexpected \[\]"):
        m.reconstruct_into(bundle, deeper)
    with pytest.raises(m.ModelError, match=r"missing keys \[\], unexpected \['4.bias'\]"):
        m.reconstruct_into(bundle, {n: t for n, t in make_mlp().state_dict().items() if n != "4.bias"})
    assert all(torch.equal(t, before[n]) for n, t in other.state_dict().items())


def test_reconstruct_into_verify_names_the_tampered_tensor(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    bundle = m.export_bundle(tiny_mlp)
    bundle.alpha[-1] += 0.5  # the last compressed tensor's codes
    with pytest.raises(m.FingerprintMismatchError, match="4.weight"):
        m.reconstruct_into(bundle, make_mlp(), verify=True)


def test_reconstruct_into_a_model_holding_its_own_base(tiny_cfg):
    """``reconstruct_into(model, base=model.state_dict())`` applies a delta in place."""
    tuned = m.compress(make_mlp(), _cfg(tiny_cfg, mode="delta", trainable=("4.bias",)))
    train_steps(tuned)
    bundle = m.export_bundle(tuned)
    expected = m.reconstruct(bundle, base=make_mlp().state_dict())
    model = make_mlp()  # the base weights, about to become the tuned ones
    m.reconstruct_into(bundle, model, base=model.state_dict(), verify=True)
    assert all(torch.equal(t, expected[n]) for n, t in model.state_dict().items())


def test_reconstruct_into_rounds_like_load_state_dict(tiny_cfg):
    """A float16 bundle loaded into a float32 model holds float16 values, as load_state_dict does."""
    model = m.compress(make_mlp(), tiny_cfg)
    train_steps(model)
    bundle = m.export_bundle(model.half())
    expected = make_mlp(seed=2)
    expected.load_state_dict(m.reconstruct(bundle), strict=True)
    for verify in (False, True):
        fresh = make_mlp(seed=2)
        m.reconstruct_into(bundle, fresh, verify=verify)
        assert all(torch.equal(t, expected.state_dict()[n]) for n, t in fresh.state_dict().items())


def test_reconstruct_into_refuses_meta_tensors(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    bundle = m.export_bundle(tiny_mlp)
    with torch.device("meta"):
        ghost = make_mlp()
    with pytest.raises(m.ModelError, match="'0.weight' is on the meta device"):
        m.reconstruct_into(bundle, ghost)


def test_batchnorm_model_round_trips(tiny_cfg):
    """0-dim buffers (BatchNorm's int64 num_batches_tracked) travel raw (regression: export failed)."""

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))

    model = m.compress(net(), tiny_cfg)
    train_steps(model)  # training mode: running stats and num_batches_tracked move
    model.eval()
    assert int(model[1].num_batches_tracked) == 3
    fresh = net().eval()
    _roundtrip(model, fresh, torch.randn(5, 16))
    assert int(fresh[1].num_batches_tracked) == 3


def test_dtype_names_and_bad_devices_or_dtypes_are_typed_errors(tiny_cfg):
    bundle = m.export_bundle(m.compress(make_mlp(), tiny_cfg))
    by_name = m.reconstruct(bundle, dtype="float16")
    assert all(t.dtype == torch.float16 for t in by_name.values())
    assert torch.equal(
        m.reconstruct(bundle, dtype="torch.bfloat16")["0.weight"],
        m.reconstruct(bundle, dtype=torch.bfloat16)["0.weight"],
    )
    for bad in ("fp8", torch.int8, 16):
        with pytest.raises(m.ConfigError, match="dtype must be one of"):
            m.reconstruct(bundle, dtype=bad)
    with pytest.raises(m.ConfigError, match="not a device torch knows"):
        m.reconstruct(bundle, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(m.DeviceUnavailableError, match="no CUDA device is available here; use device='cpu'"):
            m.reconstruct(bundle, device="cuda")
        with pytest.raises(m.DeviceUnavailableError):
            m.reconstruct_into(bundle, make_mlp(), device="cuda:0")
