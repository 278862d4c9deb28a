"""Client fixtures: a live server with a tiny full bundle and two deltas of one base."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import mcnc_core as m
from service import Settings
from tests._live import LiveServer


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 10))


@dataclass
class Fixtures:
    full: m.Bundle
    deltas: list[m.Bundle]
    base: dict[str, torch.Tensor]


@pytest.fixture(scope="session")
def bundles() -> Fixtures:
    cfg = dict(chunk_size=256, k=4, width=16)
    full = m.compress(tiny_net(0), m.MCNCConfig(**cfg))
    deltas = []
    for seed in (1, 2):
        net = m.compress(tiny_net(5), m.MCNCConfig(**cfg, mode="delta", base_name="tiny", seed=seed))
        with torch.no_grad():
            for mw in net._mcnc_state.targets.values():
                mw.beta.normal_()  # a non-trivial delta
        deltas.append(net)
    base = {k: v.contiguous() for k, v in m.base_state_dict(deltas[0]).items()}
    return Fixtures(m.export_bundle(full), [m.export_bundle(d) for d in deltas], base)


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server")) as srv:
        yield srv
