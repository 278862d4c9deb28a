"""Method fidelity: over-complete factors, generator v2, the seeded code init, and param_groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mcnc_core as m
from mcnc_core.generator import GeneratorSpec, generator_sha256, generator_weights
from tests.conftest import make_mlp, train_steps


def _cfg(**kw) -> m.MCNCConfig:
    return m.MCNCConfig(**{"k": 4, "chunk_size": 64, "width": 16, "depth": 2, "seed": 7, **kw})


# ---- over-complete factors: any rank >= 1 is honoured, never silently dropped ----


def test_over_complete_rank_is_honoured_on_every_layer():
    # layers 16->48->32->4: 64 >= min(out, in) everywhere; width 64 so a chunk can point anywhere
    # in R^64 (every chunk lies in the span of W_out's width columns)
    model = m.compress(make_mlp(), _cfg(rank=64, width=64))
    shapes = {name: mw.factors for name, mw in model._mcnc_state.targets.items()}
    assert shapes == {
        "0.weight": ((48, 64), (64, 16)),
        "2.weight": ((32, 64), (64, 48)),
        "4.weight": ((4, 64), (64, 32)),
    }
    bundle = m.export_bundle(model)
    assert [e.rank for e in bundle.manifest if e.storage == "mcnc"] == [64, 64, 64]
    # the generated weights have full rank (the factorisation is a reparameterisation, not a limit)
    assert torch.linalg.matrix_rank(model[2].weight.detach()) == 32


def test_over_complete_conv_and_embedding_use_their_2d_view():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Embedding(10, 8))
    m.compress(conv, _cfg(rank=40, min_numel=1))
    assert conv[0].mcnc_weight.factors == ((8, 40), (40, 27))
    assert conv[1].mcnc_weight.factors == ((10, 40), (40, 8))


def test_rank_on_a_1d_target_is_a_config_error_naming_it():
    with pytest.raises(m.ConfigError, match=r"target '0.bias' has shape \[48\].*exclude it"):
        m.compress(make_mlp(), _cfg(rank=2, targets=("0.*",), min_numel=1))


def test_over_complete_training_round_trips_bit_exactly():
    model = m.compress(make_mlp(), _cfg(rank=64))
    train_steps(model)
    state = m.reconstruct(m.load_bundle(m.export_bundle(model).to_bytes()), verify=True)
    fresh = make_mlp(seed=5)
    fresh.load_state_dict(state)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ---- generator v2: L is a frequency of the first layer; v1 is unchanged ----


def test_v2_first_layer_scales_with_the_bound_and_nothing_else_changes():
    kw = dict(k=8, chunk_size=256, width=32, depth=2, bound=30.0, seed=3)
    v1 = generator_weights(GeneratorSpec(**kw))
    v2 = generator_weights(GeneratorSpec(**kw, version=2, init="siren-frequency-v2"))
    # W_1 ~ U(-L/k, L/k) from the same stream: float32(L/k * (2u - 1)) vs float32(1/k * (2u - 1))
    assert np.allclose(v2[0], 30.0 * v1[0], rtol=1e-6, atol=0) and not np.array_equal(v2[0], v1[0])
    assert all(np.array_equal(a, b) for a, b in zip(v1[1:], v2[1:], strict=True))
    assert np.abs(v2[0]).max() <= 30.0 / 8


def test_v2_generator_golden_hash():
    spec = GeneratorSpec(
        k=8, chunk_size=1024, width=64, depth=2, bound=30.0, seed=0, version=2, init="siren-frequency-v2"
    )
    assert generator_sha256(spec) == "16d6dd572fd16b3426f4cfd5af7c3b1222a9be234b4c991740ca9923884d9e7d"
    assert generator_weights(spec)[0].reshape(-1)[:3].tolist() == [
        -0.7571518421173096, 2.8539011478424072, 1.7678457498550415,
    ]  # fmt: skip


def test_default_config_writes_generator_v2_and_old_configs_read_as_v1():
    cfg = m.MCNCConfig()
    assert (cfg.generator_version, cfg.bound) == (2, 30.0)
    assert cfg.generator_spec().init == "siren-frequency-v2"
    old = cfg.to_dict()
    del old["generator_version"], old["init_seed"]  # what every config written before v2 looks like
    assert m.MCNCConfig.from_dict(old).generator_version == 1
    assert m.MCNCConfig.from_dict(cfg.to_dict()) == cfg
    v1 = m.MCNCConfig(generator_version=1, bound=10.0)
    assert "generator_version" not in v1.to_dict() and m.MCNCConfig.from_dict(v1.to_dict()) == v1
    for bad, match in [({"generator_version": 3}, "generator_version"), ({"init_seed": -1}, "init_seed")]:
        with pytest.raises(m.ConfigError, match=match):
            m.MCNCConfig(**bad)


def test_v2_codes_start_in_a_fixed_range_and_v1_in_plus_minus_l():
    for version, bound, limit in [(2, 30.0, 1.0), (2, 5.0, 1.0), (1, 5.0, 5.0)]:
        model = m.compress(make_mlp(), _cfg(generator_version=version, bound=bound))
        alpha = model[0].mcnc_weight.alpha
        assert alpha.abs().max() <= limit and alpha.abs().max() > 0.8 * limit


# ---- initial codes from the project's PRNG: reproducible everywhere, seeded by init_seed ----


def test_initial_codes_do_not_depend_on_torchs_global_rng():
    torch.manual_seed(0)
    a = m.compress(make_mlp(), _cfg())
    torch.manual_seed(123)
    b = m.compress(make_mlp(), _cfg())
    c = m.compress(make_mlp(), _cfg(init_seed=1))
    for name in a._mcnc_state.targets:
        alpha_a, alpha_b = a._mcnc_state.targets[name].alpha, b._mcnc_state.targets[name].alpha
        assert torch.equal(alpha_a, alpha_b)
        assert not torch.equal(alpha_a, c._mcnc_state.targets[name].alpha)
    # tensors draw from their own streams
    assert not torch.equal(a[0].mcnc_weight.alpha[:1], a[2].mcnc_weight.alpha[:1])


# ---- param_groups: the one-line recipe ----


def test_param_groups_cover_every_trainable_parameter_once():
    model = m.compress(make_mlp(), _cfg())
    groups = m.param_groups(model)
    assert [g["name"] for g in groups] == ["mcnc.codes", "mcnc.scales", "raw"]
    assert [g["lr"] for g in groups] == list(m.recipe.RECOMMENDED_LR["full"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert len(ids) == len(set(ids))
    opt = torch.optim.Adam(groups)  # the documented recipe works as is
    loss = model(torch.randn(3, 16)).pow(2).mean()
    loss.backward()
    opt.step()


def test_param_groups_lr_scales_the_recipe_and_overrides_win():
    model = m.compress(make_mlp(), _cfg())
    c, s, r = m.recipe.RECOMMENDED_LR["full"]
    groups = m.param_groups(model, lr=2 * c)
    assert [g["lr"] for g in groups] == pytest.approx([2 * c, 2 * s, 2 * r])
    groups = m.param_groups(model, lr=c, scale_lr=0.5, raw_lr=1e-4)
    assert [g["lr"] for g in groups] == pytest.approx([c, 0.5, 1e-4])
    for bad in (0, -1.0, float("inf"), True, "0.1"):
        with pytest.raises(m.ConfigError, match="positive finite"):
            m.param_groups(model, lr=bad)


def test_param_groups_in_delta_mode_leave_frozen_base_out():
    model = m.compress(make_mlp(), _cfg(mode="delta", rank=4, trainable=("4.bias",)))
    groups = m.param_groups(model)
    assert [g["lr"] for g in groups] == list(m.recipe.RECOMMENDED_LR["delta"])
    raw = groups[-1]["params"]
    assert len(raw) == 1 and raw[0] is model[4].bias
    with pytest.raises(m.ModelError, match="not compressed"):
        m.param_groups(make_mlp())


def test_inspect_names_the_generator_version(capsys):
    from mcnc_core.cli import main

    data = Path(__file__).parents[1] / "data"
    files = data / "golden_full_v1.mcnc", data / "golden_full_r16_v2.mcnc"
    for path, shown in zip(files, ("v1 (siren-uniform-v1)", "v2 (siren-frequency-v2)"), strict=True):
        assert main(["inspect", str(path)]) == 0
        assert f"generator   {shown} k=3" in capsys.readouterr().out


# --- param_groups(total_steps=...): the horizon rule (docs/ablation.md "The horizon") ---


@pytest.mark.parametrize("mode", ["full", "delta"])
def test_total_steps_none_and_short_horizons_keep_the_recommended_rates_exactly(mode):
    assert m.recipe.code_lr(mode) == m.recipe.RECOMMENDED_LR[mode][0]
    for steps in (1, 799, 800):
        assert m.recipe.code_lr(mode, steps) == m.recipe.RECOMMENDED_LR[mode][0]


def test_the_chosen_rule_full_lowers_with_the_horizon_delta_does_not():
    # what validation chose (docs/ablation.md "The horizon"): full p = 0.2, delta p = 0
    assert [round(m.recipe.code_lr("full", t), 4) for t in (800, 3000, 12_000)] == [0.05, 0.0384, 0.0291]
    assert m.recipe.code_lr("full", 100_000) == m.recipe.code_lr("full", 12_000)  # not extrapolated
    for steps in (3000, 12_000, 100_000):
        assert m.recipe.code_lr("delta", steps) == m.recipe.RECOMMENDED_LR["delta"][0]
    model = nn.Sequential(nn.Linear(8, 8))
    m.compress(model, m.MCNCConfig(k=4, chunk_size=16, min_numel=1))
    groups = m.param_groups(model, total_steps=3000)
    assert groups[0]["lr"] == pytest.approx(m.recipe.code_lr("full", 3000))


def test_code_lr_follows_the_exponent_above_the_reference(monkeypatch):
    monkeypatch.setitem(m.recipe.HORIZON_EXPONENT, "full", 0.5)
    base = m.recipe.RECOMMENDED_LR["full"][0]
    assert m.recipe.code_lr("full", 3200) == pytest.approx(base / 2)  # (3200 / 800) ** -0.5
    assert m.recipe.code_lr("full", 100) == base  # below the measured range: the reference rate


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "800"])
def test_total_steps_must_be_a_positive_int(bad):
    with pytest.raises(m.ConfigError, match="total_steps"):
        m.recipe.code_lr("full", bad)
    with pytest.raises(m.ConfigError, match="mode"):
        m.recipe.code_lr("sideways", 800)
