"""Delta on low-rank factors trains at adapter cost: base(x) + x Bᵀ Aᵀ, the base left untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcnc_core as m
import mcnc_core.layers
from tests.conftest import make_mlp, train_steps


def _delta(rank: int = 4, **kw) -> m.MCNCConfig:
    return m.MCNCConfig(
        **{"k": 4, "chunk_size": 64, "width": 16, "seed": 7, "mode": "delta", "rank": rank, "base_name": "b", **kw}
    )


def test_linear_targets_keep_their_base_parameter_and_start_at_the_base():
    model = make_mlp()
    weights = {i: model[i].weight for i in (0, 2, 4)}
    ref = make_mlp()
    m.compress(model, _delta())
    x = torch.randn(5, 16)
    assert torch.equal(model(x), ref(x))
    for i, w in weights.items():
        assert model[i].weight is w and not w.requires_grad  # the module's own tensor, frozen
        assert model[i].mcnc_weight.adapter == "linear" and model[i].mcnc_weight.base is None
        assert model[i]._forward_pre_hooks == {} and len(model[i]._forward_hooks) == 1
    assert not any("mcnc_weight.base" in k for k in model.state_dict())  # no second copy of the base


def test_training_never_builds_the_full_delta_and_leaves_the_base_untouched(monkeypatch):
    model = make_mlp()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    m.compress(model, _delta())

    def refuse(*args, **kwargs):
        raise AssertionError("the full weight was rebuilt during training")

    monkeypatch.setattr(mcnc_core.layers, "decode_tensor", refuse)
    train_steps(model, steps=4)
    monkeypatch.undo()
    for name, t in model.state_dict().items():
        if name in base:
            assert torch.equal(t, base[name]), name
    x = torch.randn(3, 16)
    assert not torch.equal(model(x), make_mlp()(x))  # it learned something


def test_adapter_output_is_the_low_rank_delta():
    model = m.compress(make_mlp(), _delta())
    train_steps(model)
    x = torch.randn(7, 16)
    mw = model[0].mcnc_weight
    merged = mw(model[0].weight)  # base + A @ B, what reconstruct writes
    torch.testing.assert_close(model[0](x), nn.functional.linear(x, merged, model[0].bias), rtol=1e-5, atol=1e-6)
    a, b = mcnc_core.decode.decode_factors(mw.generator, mw.alpha, mw.beta, mw.factors)
    assert a.shape == (48, 4) and b.shape == (4, 16)
    torch.testing.assert_close(merged, model[0].weight + a @ b, rtol=0, atol=0)


def test_half_precision_inputs_get_a_half_precision_delta():
    model = m.compress(make_mlp(), _delta())
    train_steps(model)
    model.half()
    out = model(torch.randn(2, 16).half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_non_linear_targets_fall_back_to_rebuilding_their_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    m.compress(net, _delta(rank=2))
    assert net[0].mcnc_weight.adapter is None and net[0].mcnc_weight.base is not None
    assert net[2].mcnc_weight.adapter == "linear"
    train_steps(net)
    bundle = m.load_bundle(m.export_bundle(net).to_bytes())
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    state = m.reconstruct(bundle, base=fresh.state_dict(), verify=True)
    baked = m.materialize(net).state_dict()
    assert all(torch.equal(baked[k], state[k]) for k in state)


def test_gpt2_conv1d_trains_as_x_a_b_and_round_trips():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    m.compress(model, _delta(rank=4, targets=("*.c_attn.weight", "*.c_fc.weight")))
    attn = model.transformer.h[0].attn.c_attn
    assert attn.mcnc_weight.adapter == "conv1d" and attn.mcnc_weight.factors == ((32, 4), (4, 96))
    opt = torch.optim.Adam(m.param_groups(model, lr=0.05))
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model(ids).logits
    bundle = m.load_bundle(m.export_bundle(model).to_bytes())
    state = m.reconstruct(bundle, base=base, verify=True)
    m.materialize(model)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained, rtol=1e-4, atol=1e-5)
    assert not torch.equal(state["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])
