"""export_peft: a delta bundle on low-rank factors loads in real peft as the same model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mcnc_core as m
from mcnc_core.peft import ExportError, check_vllm, export_peft, lora_factors, peft_adapter_files, peft_metadata
from tests._adapters import CODES, TARGETS, gpt2, llama, logits, lora_delta, train


@pytest.fixture(scope="module")
def trained_llama():
    """(bundle, base state dict taken before compress, logits of the trained compressed model)."""
    case = lora_delta(targets=(*TARGETS, "model.embed_tokens.weight"))
    # peft_metadata recorded the Embedding target in the bundle
    assert json.loads(case.bundle.metadata["x-peft-modules"]) == {"conv1d": [], "embeddings": ["model.embed_tokens"]}
    return case.bundle, case.base, case.logits


def load_peft(directory, seed: int = 0, make=llama) -> nn.Module:
    return peft.PeftModel.from_pretrained(make(seed), str(directory)).eval()


def test_peft_merged_weights_equal_reconstruct_and_logits_equal_training(trained_llama, tmp_path):
    bundle, base, trained_logits = trained_llama
    out = export_peft(bundle, tmp_path / "adapter", dtype=torch.float32)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 8 and config["base_model_name_or_path"] == "tiny-llama"
    assert "model.layers.1.mlp.down_proj" in config["target_modules"]

    loaded = load_peft(out)
    # Unmerged peft computes base(x) + lora_B(lora_A(x)) in another order than W @ x: float32 rounding
    # (logits are O(1); 1e-5 is ~100 ulps, far below any real difference a wrong factor would make).
    torch.testing.assert_close(logits(loaded), trained_logits, rtol=1e-5, atol=1e-5)
    merged = loaded.merge_and_unload().state_dict()
    expected = m.reconstruct(bundle, base=base)
    assert merged.keys() == expected.keys()
    for name, t in expected.items():
        if name == "model.embed_tokens.weight":
            # peft's embedding delta is (lora_B @ lora_A).T = (Bᵀ Aᵀ)ᵀ: another GEMM than A @ B.
            torch.testing.assert_close(merged[name], t, rtol=1e-6, atol=1e-7)
        else:  # lora_B @ lora_A is A @ B on the same operands; scaling exactly 1; base + delta in float32
            assert torch.equal(merged[name], t), name
    torch.testing.assert_close(logits(llama_with(expected)), trained_logits, rtol=1e-5, atol=1e-5)


def llama_with(state: dict) -> nn.Module:
    model = llama(seed=5)
    model.load_state_dict(state, strict=True)
    return model


def test_keys_and_factors_match_peft_naming(trained_llama):
    bundle = trained_llama[0]
    files = peft_adapter_files(bundle, dtype=torch.float32, embeddings=["model.embed_tokens"])
    from safetensors.torch import load

    tensors = load(files["adapter_model.safetensors"])
    a, b = lora_factors(bundle, "model.layers.0.self_attn.v_proj.weight")  # (32, 8), (8, 64)
    key = "base_model.model.model.layers.0.self_attn.v_proj"
    assert torch.equal(tensors[key + ".lora_B.weight"], a) and torch.equal(tensors[key + ".lora_A.weight"], b)
    assert tensors["base_model.model.model.embed_tokens.lora_embedding_A"].shape == (8, 128)
    assert len(tensors) == 2 * (5 * 2 + 1)  # five targets in two layers, and the embedding
    # A @ B is the delta reconstruct adds to the base.
    delta = m.reconstruct(bundle, base=trained_llama[1])[key[len("base_model.model.") :] + ".weight"]
    assert torch.equal(delta, trained_llama[1]["model.layers.0.self_attn.v_proj.weight"] + a @ b)


def test_default_dtype_is_bfloat16_and_deterministic(trained_llama, tmp_path):
    bundle = trained_llama[0]
    out = export_peft(bundle, tmp_path / "bf16", embeddings=["model.embed_tokens"])
    tensors = load_file(out / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    a, _ = lora_factors(bundle, "model.layers.1.mlp.up_proj.weight")
    assert torch.equal(tensors["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"], a.to(torch.bfloat16))
    again = peft_adapter_files(bundle, embeddings=["model.embed_tokens"])
    assert again["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert load_peft(out) is not None  # loads


def test_modules_to_save_carry_raw_trainables(tmp_path):
    model = llama(1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    m.compress(model, m.MCNCConfig(mode="delta", rank=8, targets=TARGETS, trainable=("model.norm.*",), **CODES))
    train(model, steps=2)
    bundle = m.export_bundle(model)
    out = export_peft(bundle, tmp_path / "a", dtype=torch.float32)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.norm"]
    assert "base_model.model.model.norm.weight" in load_file(out / "adapter_model.safetensors")
    merged = load_peft(out, seed=1).merge_and_unload().state_dict()
    for name, t in m.reconstruct(bundle, base=base).items():
        assert torch.equal(merged[name], t), name
    assert any("modules_to_save" in p for p in check_vllm(out))


def test_gpt2_conv1d_needs_fan_in_fan_out(tmp_path):
    model = gpt2()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = m.MCNCConfig(mode="delta", rank=8, targets=("*.c_attn.weight", "*.c_proj.weight", "*.c_fc.weight"), **CODES)
    m.compress(model, cfg)
    train(model, steps=3)
    trained_logits = logits(model)
    bundle = m.export_bundle(model, metadata=peft_metadata(model))  # records the Conv1D targets
    out = export_peft(bundle, tmp_path / "g", dtype=torch.float32)
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    loaded = peft.PeftModel.from_pretrained(gpt2(), str(out)).eval()
    torch.testing.assert_close(logits(loaded), trained_logits, rtol=1e-5, atol=1e-5)
    merged = loaded.merge_and_unload().state_dict()
    for name, t in m.reconstruct(bundle, base=base).items():
        # (Bᵀ Aᵀ)ᵀ instead of A @ B: float32 rounding of an 8-term sum at most.
        torch.testing.assert_close(merged[name], t, rtol=1e-6, atol=1e-7, msg=name)
    # As Linear factors they have the transposed shapes of what peft builds for Conv1D.
    wrong = export_peft(bundle, tmp_path / "w", dtype=torch.float32, fan_in_fan_out=False)
    with pytest.raises(RuntimeError, match="size mismatch"):
        peft.PeftModel.from_pretrained(gpt2(), str(wrong))


def mlp_delta(**kw) -> m.Bundle:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 10))
    m.compress(net, m.MCNCConfig(**{**CODES, "mode": "delta", **kw}))
    return m.export_bundle(net)


def test_what_cannot_be_exported_is_named(tmp_path):
    torch.manual_seed(0)
    full = nn.Sequential(nn.Linear(40, 64))
    m.compress(full, m.MCNCConfig(**CODES))
    with pytest.raises(ExportError, match="full-mode bundle is a whole model"):
        export_peft(m.export_bundle(full), tmp_path / "full")
    with pytest.raises(ExportError, match=r"tensor '0.weight' is a full delta \(rank 0\)"):
        export_peft(mlp_delta(rank=0), tmp_path / "r0")
    with pytest.raises(ExportError, match=r"raw tensor '0.bias' cannot be exported.*also holds \['0.weight"):
        export_peft(mlp_delta(rank=2, trainable=("0.bias",)), tmp_path / "bias")
    with pytest.raises(ExportError, match=r"embeddings \['nope'\] are not compressed targets"):
        export_peft(mlp_delta(rank=2), tmp_path / "e", embeddings=["nope"])
    assert not any(p.exists() for p in (tmp_path / "full", tmp_path / "r0", tmp_path / "bias", tmp_path / "e"))
    assert isinstance(ExportError("x"), m.MCNCError)
    ok = mlp_delta(rank=2, exclude=("2.weight",), trainable=("2.*",))  # a whole head trains raw: modules_to_save
    assert json.loads(peft_adapter_files(ok)["adapter_config.json"])["modules_to_save"] == ["2"]


def test_recorded_module_kinds_are_checked(trained_llama):
    bundle = trained_llama[0]
    mixed = dataclasses.replace(
        bundle, metadata={"x-peft-modules": '{"conv1d":["model.layers.0.mlp.up_proj"],"embeddings":[]}'}
    )
    with pytest.raises(ExportError, match="targets mix GPT-2 Conv1D modules"):
        peft_adapter_files(mixed)
    with pytest.raises(ExportError, match="'x-peft-modules' is malformed"):
        peft_adapter_files(dataclasses.replace(bundle, metadata={"x-peft-modules": "[]"}))


def test_check_vllm_reports_each_rule():
    ok = {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj"], "bias": "none"}
    assert check_vllm(ok) == []
    bad = {**ok, "r": 64, "bias": "all", "use_dora": True, "modules_to_save": ["lm_head"], "rank_pattern": {"x": 32}}
    problems = check_vllm(bad, max_lora_rank=16)
    assert len(problems) == 5
    assert "r = 64 exceeds max_lora_rank 16: start vLLM with --max-lora-rank 64" in problems[0]
    assert "rank_pattern['x'] = 32 exceeds" in problems[1]
    assert any("bias = 'all'" in p for p in problems) and any("DoRA" in p for p in problems)
    assert check_vllm(ok, max_lora_rank=12) == [
        "max_lora_rank 12 is not one of vLLM's [1, 8, 16, 32, 64, 128, 256, 320, 512]"
    ]
    assert check_vllm({"r": 8}) == ["adapter_config.json lacks ['lora_alpha', 'target_modules']"]


def test_export_needs_neither_peft_nor_transformers(tmp_path):
    bundle = tmp_path / "d.mcnc"
    m.save_bundle(mlp_delta(rank=2), bundle)
    code = (
        "import sys; sys.modules['peft'] = sys.modules['transformers'] = None\n"  # any import of them fails
        "import mcnc_core as m\n"
        f"m.export_peft(m.load_bundle({str(bundle)!r}), {str(tmp_path / 'out')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
