"""Write the golden bundles that do not exist yet (each file is frozen once written).

    python tests/data/make_golden.py            # writes missing files only
    python tests/data/make_golden.py --check    # rebuilds all in memory, compares with the files

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


def _bundles(version: int) -> dict[str, bytes]:
    cfg = dict(k=3, chunk_size=32, width=8, depth=2, bound=6.0, seed=12345, generator_version=version)
    full = m.compress(_net(), m.MCNCConfig(**cfg))
    delta = m.compress(_net(), m.MCNCConfig(**cfg, mode="delta", rank=2, base_name="golden-base", trainable=("3.*",)))
    models = {f"golden_full_v{version}.mcnc": full, f"golden_delta_r2_v{version}.mcnc": delta}
    if version >= 2:  # over-complete factors: rank 16 > min(20, 12) and > min(3, 20)
        models["golden_full_r16_v2.mcnc"] = m.compress(_net(), m.MCNCConfig(**cfg, rank=16))
    out = {}
    for name, model in models.items():
        for j, mw in enumerate(model._mcnc_state.targets.values()):
            _fill(mw.alpha, 200 + 2 * j, 6.0 if version == 1 else 1.0)
            _fill(mw.beta, 201 + 2 * j, 1.0)
        for j, (_, p) in enumerate(p for p in model.named_parameters() if p[1].requires_grad and "mcnc" not in p[0]):
            _fill(p, 300 + j, 0.5)
        out[name] = m.export_bundle(model, metadata={"x-purpose": "golden test vector"}).to_bytes()
    if version == 1:
        base = m.base_state_dict(delta)
        from mcnc_core.safetensors_io import build_header, tensor_bytes

        prefix, _ = build_header([(k, "F32", tuple(v.shape)) for k, v in base.items()], None)
        out["golden_base_v1.safetensors"] = prefix + b"".join(bytes(tensor_bytes(v)) for v in base.values())
    return out


def same_content(frozen: bytes, rebuilt: bytes) -> bool:
    """Byte-identical, or the same bundle whose fingerprint was printed with other float digits
    (the writer's float formatting changed after the v1 files were frozen; the values agree)."""
    if frozen == rebuilt:
        return True
    a, b = m.load_bundle(frozen), m.load_bundle(rebuilt)
    meta_a, meta_b = a.header_metadata(), b.header_metadata()
    fp_a, fp_b = meta_a.pop("fingerprint"), meta_b.pop("fingerprint")
    close = all(
        abs(x - y) <= 1e-6 * max(1.0, abs(x))
        for name in a.fingerprint
        for x, y in zip(a.fingerprint[name], b.fingerprint[name], strict=True)
    )
    tensors = torch.equal(a.alpha, b.alpha) and torch.equal(a.beta, b.beta) and a.raw.keys() == b.raw.keys()
    tensors = tensors and all(torch.equal(a.raw[k], b.raw[k]) for k in a.raw)
    return meta_a == meta_b and close and tensors and bool(fp_a) and bool(fp_b)


def build() -> dict[str, bytes]:
    """Every golden file: version 1 (generator v1, frozen since format v1) and version 2."""
    return {**_bundles(1), **_bundles(2)}


if __name__ == "__main__":
    # --check: rebuild in memory and compare with the frozen files (nothing is written).
    for name, data in build().items():
        path = HERE / name
        if "--check" in sys.argv:
            print(name, len(data), "same" if path.exists() and same_content(path.read_bytes(), data) else "DIFFERS")
        elif not path.exists():  # frozen: an existing golden file is never rewritten
            path.write_bytes(data)
            print(name, len(data), "written")
