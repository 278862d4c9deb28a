"""Tiny transformers models (random init from configs, nothing downloaded) and a trained LoRA-style delta."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import mcnc_core as m
from mcnc_core.peft import peft_metadata

TARGETS = ("*.q_proj.weight", "*.v_proj.weight", "*.o_proj.weight", "*.up_proj.weight", "*.down_proj.weight")
CODES = dict(k=4, chunk_size=200, width=16, seed=3)  # no factor fills whole chunks


def llama(seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=128)  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2(seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def train(model: nn.Module, steps: int = 4) -> None:
    """A few Adam steps of language modelling on random tokens (codes move away from zero)."""
    g = torch.Generator().manual_seed(1)
    params = m.param_groups(model) if hasattr(m, "param_groups") else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.05)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, 128, (2, 12), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def logits(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return model(input_ids=ids).logits


@dataclass(frozen=True)
class LoraDelta:
    """A trained delta bundle on rank-8 factors of a tiny Llama, its base and the trained logits."""

    bundle: m.Bundle
    base: dict[str, torch.Tensor]  # the model's state dict before compress
    logits: torch.Tensor


def lora_delta(seed: int = 0, **config) -> LoraDelta:
    model = llama(seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"targets": TARGETS, **CODES, **config}
    m.compress(model, m.MCNCConfig(mode="delta", rank=8, base_name="tiny-llama", **cfg))
    train(model)
    bundle = m.export_bundle(model, metadata=peft_metadata(model))
    return LoraDelta(bundle, base, logits(model))
