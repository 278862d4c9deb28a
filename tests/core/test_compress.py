"""compress(): what gets targeted, what trains, delta/low-rank semantics, materialize, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcnc_core as m
from tests.conftest import make_mlp, train_steps


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_full_mode_trains_codes_and_raw_only(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    names = trainable(tiny_mlp)
    assert names == [
        "0.bias", "0.mcnc_weight.alpha", "0.mcnc_weight.beta",
        "2.bias", "2.mcnc_weight.alpha", "2.mcnc_weight.beta",
        "4.bias", "4.mcnc_weight.alpha", "4.mcnc_weight.beta",
    ]  # fmt: skip
    sd = tiny_mlp.state_dict()
    assert not any(k.endswith(".weight") or "generator" in k for k in sd)
    assert tiny_mlp[0].mcnc_weight.alpha.shape == (12, 4)  # 16*48 / 64 chunks, k = 4


def test_full_mode_init_keeps_each_layers_scale(tiny_cfg):
    ref, model = make_mlp(), make_mlp()
    m.compress(model, tiny_cfg)
    for i in (0, 2, 4):
        rms_ref = ref[i].weight.pow(2).mean().sqrt()
        torch.testing.assert_close(model[i].weight.pow(2).mean().sqrt(), rms_ref, rtol=0.05, atol=0)


def test_gradients_reach_codes(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    tiny_mlp(torch.randn(3, 16)).sum().backward()
    mw = tiny_mlp[2].mcnc_weight
    assert mw.alpha.grad is not None and mw.alpha.grad.abs().sum() > 0
    assert mw.beta.grad is not None and mw.beta.grad.abs().sum() > 0


def test_delta_mode_starts_exactly_at_the_base(tiny_cfg):
    base, model = make_mlp(), make_mlp()
    cfg = m.MCNCConfig(**{**tiny_cfg.to_dict(), "mode": "delta", "trainable": ("4.*",), "base_name": "tiny"})
    m.compress(model, cfg)
    x = torch.randn(5, 16)
    assert torch.equal(model(x), base(x))
    assert trainable(model) == [
        "0.mcnc_weight.alpha", "0.mcnc_weight.beta", "2.mcnc_weight.alpha", "2.mcnc_weight.beta",
        "4.bias", "4.mcnc_weight.alpha", "4.mcnc_weight.beta",
    ]  # fmt: skip
    train_steps(model)
    assert torch.equal(model[0].bias, base[0].bias)  # frozen, read from the base
    assert not torch.equal(model[0].weight, base[0].weight)
    assert set(m.base_state_dict(model)) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight"}


def test_low_rank_factors(tiny_cfg):
    model = make_mlp()
    m.compress(model, m.MCNCConfig(**{**tiny_cfg.to_dict(), "rank": 2}))
    mw = model[0].mcnc_weight
    assert mw.factors == ((48, 2), (2, 16))
    assert mw.alpha.shape[0] == 2 + 1  # ceil(96/64) + ceil(32/64)
    assert torch.linalg.matrix_rank(model[0].weight.detach()) <= 2


def test_conv_and_embedding_are_default_targets(tiny_cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(0, 1))
    m.compress(model, tiny_cfg)
    assert isinstance(model[0].mcnc_weight, nn.Module)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv1d(8, 8, 1))
    m.compress(conv, m.MCNCConfig(**{**tiny_cfg.to_dict(), "rank": 2}))
    assert conv[2].mcnc_weight.factors == ((8, 2), (2, 72))
    assert conv[0].mcnc_weight.factors == ((8, 2), (2, 27))
    assert conv[3].mcnc_weight.factors == ((8, 2), (2, 8))  # 64 elements = min_numel: compressed


def test_targets_exclude_and_min_numel(tiny_cfg):
    model = make_mlp()
    m.compress(model, m.MCNCConfig(**{**tiny_cfg.to_dict(), "targets": ("*.weight",), "exclude": ("4.*",)}))
    assert hasattr(model[0], "mcnc_weight") and hasattr(model[2], "mcnc_weight")
    assert not hasattr(model[4], "mcnc_weight")
    small = make_mlp()
    m.compress(small, m.MCNCConfig(**{**tiny_cfg.to_dict(), "min_numel": 1000}))
    assert [n for n in small.state_dict() if "mcnc" in n] == ["2.mcnc_weight.alpha", "2.mcnc_weight.beta"]


def test_errors_name_the_problem(tiny_mlp, tiny_cfg):
    with pytest.raises(m.ModelError, match="not compressed"):
        m.export_bundle(tiny_mlp)
    with pytest.raises(m.ModelError, match="nothing to compress"):
        m.compress(make_mlp(), m.MCNCConfig(**{**tiny_cfg.to_dict(), "targets": ("nope.*",)}))
    m.compress(tiny_mlp, tiny_cfg)
    with pytest.raises(m.ModelError, match="already compressed"):
        m.compress(tiny_mlp, tiny_cfg)
    with pytest.raises(m.ModelError, match="only defined for delta"):
        m.base_state_dict(tiny_mlp)


def test_shared_weights_cannot_be_targets(tiny_cfg):
    a = nn.Linear(32, 32)
    model = nn.Sequential(a, nn.ReLU(), a)
    with pytest.raises(m.ModelError, match="shared"):
        m.compress(model, tiny_cfg)


def test_delta_export_refuses_silently_changed_base_tensors(tiny_cfg):
    model = make_mlp()
    m.compress(model, m.MCNCConfig(**{**tiny_cfg.to_dict(), "mode": "delta"}))
    with torch.no_grad():
        model[4].bias.add_(1.0)  # a frozen tensor the bundle would read from the base
    with pytest.raises(m.ModelError, match="changed since compress"):
        m.export_bundle(model)


def test_materialize_returns_a_plain_model_with_the_same_function(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    train_steps(tiny_mlp)
    x = torch.randn(4, 16)
    before = tiny_mlp(x)
    m.materialize(tiny_mlp)
    assert torch.equal(tiny_mlp(x), before)
    assert list(tiny_mlp.state_dict()) == list(make_mlp().state_dict())
    assert all(p.requires_grad for p in tiny_mlp.parameters())
    assert tiny_mlp._forward_pre_hooks == {} and tiny_mlp[0]._forward_pre_hooks == {}
    m.compress(tiny_mlp, tiny_cfg)  # and can be compressed again


def test_model_half_keeps_codes_and_generator_in_their_dtypes(tiny_mlp, tiny_cfg):
    m.compress(tiny_mlp, tiny_cfg)
    tiny_mlp.half()
    mw = tiny_mlp[0].mcnc_weight
    assert mw.alpha.dtype == torch.float32 and mw.generator.w0.dtype == torch.float32
    assert tiny_mlp(torch.randn(2, 16).half()).dtype == torch.float16


def test_config_validation_and_round_trip():
    cfg = m.MCNCConfig(mode="delta", rank=4, targets=["*.weight"], base_name="b")
    assert m.MCNCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.warns(UserWarning, match="unknown MCNCConfig keys"):
        m.MCNCConfig.from_dict({**cfg.to_dict(), "future_knob": 1})
    for bad, match in [
        ({"k": 0}, "k must be"), ({"chunk_size": 1}, "chunk_size must be"), ({"depth": 9}, "depth must be"),
        ({"bound": float("nan")}, "bound must be"), ({"seed": -1}, "seed must be"), ({"mode": "lora"}, "mode must be"),
        ({"rank": -1}, "rank must be"), ({"targets": [""]}, "non-empty"), ({"format_version": 2}, "not supported"),
    ]:  # fmt: skip
        with pytest.raises(m.ConfigError, match=match):
            m.MCNCConfig(**bad)


def test_trained_compressed_model_beats_chance_within_seconds():
    """scikit-learn's digits (ships with the package): 10 classes, chance = 10%."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    m.compress(model, m.MCNCConfig(k=8, chunk_size=256, width=32, depth=2, bound=10.0))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for _ in range(150):
        loss = nn.functional.cross_entropy(model(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    bundle = m.export_bundle(model)
    assert bundle.num_params / bundle.stored_numbers > 10
    assert acc > 0.5, acc
