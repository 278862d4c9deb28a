"""Shared fixtures: tiny seeded models and configs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import mcnc_core as m


def make_mlp(seed: int = 0, sizes: tuple[int, ...] = (16, 48, 32, 4)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@pytest.fixture
def tiny_cfg() -> m.MCNCConfig:
    return m.MCNCConfig(k=4, chunk_size=64, width=16, depth=2, bound=5.0, seed=7)


@pytest.fixture
def tiny_mlp() -> nn.Sequential:
    return make_mlp()


def train_steps(model: nn.Module, steps: int = 3, seed: int = 1, lr: float = 0.05) -> None:
    """A few Adam steps on random data, so codes and raw tensors move away from their init."""
    g = torch.Generator().manual_seed(seed)
    first = next(mod for mod in model.modules() if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        if isinstance(first, nn.Embedding):
            x = torch.randint(0, first.num_embeddings, (8, 5), generator=g)
        elif isinstance(first, nn.Conv2d):
            x = torch.randn(4, first.in_channels, 8, 8, generator=g)
        elif isinstance(first, nn.Conv1d):
            x = torch.randn(4, first.in_channels, 12, generator=g)
        else:
            x = torch.randn(8, first.in_features, generator=g)
        loss = model(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub in this process online, whatever ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``
    said when it was imported (it reads them once; CI sets them so that nothing reaches a real hub).
    Child processes get a clean environment from ``tests._hubenv.hub_child_env`` instead."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
