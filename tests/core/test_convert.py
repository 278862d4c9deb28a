"""convert_peft / ``mcnc convert``: a trained peft LoRA adapter distilled into a delta bundle at <= 5 % of its size."""

from __future__ import annotations

import copy
import json
import shutil

import peft
import pytest
import torch
from safetensors.torch import save_file

import mcnc_core as m
from mcnc_core.cli import main
from mcnc_core.convert import CONVERT_METADATA_KEY, budget_config
from tests._adapters import llama

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
T = 16


def shift_task(n: int, seed: int) -> torch.Tensor:
    """Next token = previous + 3 (mod 32): a synthetic next-token task the random base cannot do."""
    start = torch.randint(0, 32, (n, 1), generator=torch.Generator().manual_seed(seed))
    return (start + 3 * torch.arange(T)) % 32


def lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(adapter dir, train inputs, held-out inputs, base loss, adapter loss, adapter numbers)."""
    torch.set_num_threads(1)
    train, held = shift_task(512, 1), shift_task(256, 2)
    cfg = peft.LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=LINEARS)
    model = peft.get_peft_model(llama(), cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(150):
        ids = train[torch.randint(0, len(train), (16,), generator=g)]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    numbers = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    base_loss, lora_loss = lm_loss(llama(), held), lm_loss(model, held)
    assert base_loss - lora_loss > 1.0, (base_loss, lora_loss)  # the adapter learned the task
    return out, train, held, base_loss, lora_loss, numbers


def kept(bundle: m.Bundle, trained) -> float:
    """Fraction of the adapter's held-out loss reduction over the base that the bundle keeps."""
    _, _, held, base_loss, lora_loss, _ = trained
    model = llama()
    model.load_state_dict(m.reconstruct(bundle, base=llama().state_dict()))
    return (base_loss - lm_loss(model, held)) / (base_loss - lora_loss)


def test_convert_peft_keeps_half_the_gain_at_5_percent_and_leaves_the_base(trained):
    adapter, train, _, _, _, numbers = trained
    base = llama()
    before = copy.deepcopy(base.state_dict())
    flags = {n: p.requires_grad for n, p in base.named_parameters()}
    batches = [{"input_ids": train[i : i + 16]} for i in range(0, len(train), 16)]
    budget = numbers // 20
    bundle = m.convert_peft(base, adapter, batches, m.MCNCConfig(), steps=200, budget=budget, progress=False)

    assert bundle.stored_numbers <= budget and bundle.config.rank == 16 and bundle.mode == "delta"
    assert len([e for e in bundle.manifest if e.storage == "mcnc"]) == 2 * len(LINEARS)
    assert kept(bundle, trained) >= 0.5
    info = json.loads(bundle.metadata[CONVERT_METADATA_KEY])
    assert info["adapter_numbers"] == numbers and info["loss"] == "kl" and info["gap_end"] < info["gap_start"] / 3
    # the base is untouched (tensors, flags, no hooks left) and the bundle references it by digest
    after = base.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in base.named_parameters()} == flags
    assert not any(mod._forward_hooks for mod in base.modules())
    assert bundle.base.sha256 == m.state_digest(before)


def _tokenizer_dir(path) -> None:
    """A word-level tokenizer "t0".."t127" -> ids 0..127 (the tiny Llama's vocabulary), saved locally."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(128)}, unk_token="t127"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t127", unk_token="t127").save_pretrained(path)


def test_mcnc_convert_from_files_text_and_safetensors(trained, tmp_path, capsys):
    adapter, train, _, _, _, numbers = trained
    base_dir = tmp_path / "base"
    llama().save_pretrained(base_dir)
    _tokenizer_dir(base_dir)
    text = tmp_path / "inputs.txt"
    text.write_text("\n".join(" ".join(f"t{int(i)}" for i in row) for row in train) + "\n")
    out = tmp_path / "lora.mcnc"
    argv = ["convert", str(adapter), "--base", str(base_dir), "--data", str(text), "--budget", str(numbers // 20),
            "-o", str(out), "--steps", "200", "--batch-size", "16", "--no-progress", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    bundle = m.load_bundle(out)
    assert result["stored_numbers"] == bundle.stored_numbers <= numbers // 20
    assert kept(bundle, trained) >= 0.5

    # a safetensors base file with --config, and inputs as a safetensors file of input_ids
    weights = tmp_path / "base.safetensors"
    save_file(llama().state_dict(), weights)
    ids = tmp_path / "ids.safetensors"
    save_file({"input_ids": train[:64].contiguous()}, ids)
    argv = ["convert", str(adapter), "--base", str(weights), "--config", str(base_dir / "config.json"),
            "--data", str(ids), "--budget", "1.5k", "-o", str(tmp_path / "b.mcnc"), "--steps", "5"]  # fmt: skip
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert m.load_bundle(tmp_path / "b.mcnc").base.sha256 == bundle.base.sha256


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"bias": "all"}, "bias='all'"),
        ({"peft_type": "VERA"}, "peft_type 'VERA' is not LoRA"),
    ],
)
def test_unconvertible_adapters_raise_a_typed_error(trained, tmp_path, capsys, edit, match):
    adapter = tmp_path / "adapter"
    shutil.copytree(trained[0], adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(m.AdapterError, match=match):
        m.convert_peft(llama(), adapter, [trained[1][:4]], None, steps=1)
    ids = tmp_path / "ids.safetensors"
    save_file({"input_ids": trained[1][:4].contiguous()}, ids)
    weights = tmp_path / "base.safetensors"
    save_file(llama().state_dict(), weights)
    llama().save_pretrained(tmp_path / "base")
    config = tmp_path / "base" / "config.json"
    argv = ["convert", str(adapter), "--base", str(weights), "--config", str(config), "--data", str(ids),
            "--budget", "1k", "-o", str(tmp_path / "x.mcnc")]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2  # bad input: one line on stderr, nothing written
    err = capsys.readouterr().err
    assert err.startswith("mcnc convert: error: ") and match.split("'")[0] in err and err.count("\n") == 1
    assert not (tmp_path / "x.mcnc").exists()


def test_unsupported_layer_is_named(trained, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(288, 2))
    pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["0"]))
    pm.save_pretrained(tmp_path)
    with pytest.raises(m.AdapterError, match=r"module '0' is a Conv2d"):
        m.convert_peft(model, tmp_path, [torch.zeros(1, 3, 8, 8)], None, steps=1)


def test_budget_config_hits_the_count_or_says_what_fits():
    sizes = [1024, 1024, 512, 1024]
    cfg = budget_config(m.MCNCConfig(k=8), sizes, 351)
    stored = (cfg.k + 1) * sum(-(-s // cfg.chunk_size) for s in sizes)
    assert stored <= 351 and (cfg.k + 1) * sum(-(-s // (cfg.chunk_size - 1)) for s in sizes) > 351
    assert budget_config(m.MCNCConfig(k=8), sizes, 20).k == 4  # one chunk per factor, k lowered to fit
    with pytest.raises(m.ConfigError, match="below the smallest bundle"):
        budget_config(m.MCNCConfig(), sizes, 7)
