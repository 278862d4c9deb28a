"""Regenerate the golden bundles (run once per format version; the files are then frozen).

    python tests/data/make_golden.py

Everything is drawn from ``mcnc_core.prng`` (not torch's RNG), so the *inputs* are portable;
the fingerprints recorded in the files come from this machine's float32 reconstruction and
every future reader must reproduce them within the documented tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import mcnc_core as m
from mcnc_core import prng

HERE = Path(__file__).parent


def _fill(t: torch.Tensor, stream: int, bound: float) -> None:
    vals = prng.uniform_symmetric(2026, stream, t.numel(), bound)
    with torch.no_grad():
        t.copy_(torch.from_numpy(vals).reshape(t.shape))


def _net() -> nn.Module:
    net = nn.Sequential(nn.Linear(12, 20), nn.Tanh(), nn.Linear(20, 3), nn.LayerNorm(3))
    for i, (_, p) in enumerate(net.named_parameters()):
        _fill(p, 100 + i, 0.3)
    return net


def build() -> dict[str, bytes]:
    cfg = dict(k=3, chunk_size=32, width=8, depth=2, bound=6.0, seed=12345)
    full = m.compress(_net(), m.MCNCConfig(**cfg))
    delta = m.compress(_net(), m.MCNCConfig(**cfg, mode="delta", rank=2, base_name="golden-base", trainable=("3.*",)))
    out = {}
    for name, model in (("golden_full_v1.mcnc", full), ("golden_delta_r2_v1.mcnc", delta)):
        for j, mw in enumerate(model._mcnc_state.targets.values()):
            _fill(mw.alpha, 200 + 2 * j, 6.0)
            _fill(mw.beta, 201 + 2 * j, 1.0)
        for j, (_, p) in enumerate(p for p in model.named_parameters() if p[1].requires_grad and "mcnc" not in p[0]):
            _fill(p, 300 + j, 0.5)
        out[name] = m.export_bundle(model, metadata={"x-purpose": "golden test vector"}).to_bytes()
    base = m.base_state_dict(delta)
    from mcnc_core.safetensors_io import build_header, tensor_bytes

    prefix, _ = build_header([(k, "F32", tuple(v.shape)) for k, v in base.items()], None)
    out["golden_base_v1.safetensors"] = prefix + b"".join(bytes(tensor_bytes(v)) for v in base.values())
    return out


if __name__ == "__main__":
    for name, data in build().items():
        if "--check" not in sys.argv:
            (HERE / name).write_bytes(data)
        print(name, len(data))
