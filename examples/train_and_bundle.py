"""Train an MLP on mnist1d in MCNC full mode, save it as a bundle, reload and reconstruct it.

The MLP is 40 -> 512 -> 512 -> 10 (ReLU). Every weight matrix is generated chunk by chunk as
``beta * phi(alpha)`` (the default config: k=8, chunk_size=1024, generator v2 with L=30: ~114x on
the weights); the biases travel raw. Training is the documented one-line recipe,
``torch.optim.Adam(mcnc_core.param_groups(model))``, with cosine decay.
The ratio printed is honest: float32 safetensors bytes of the full state dict (biases
included) divided by the bundle file's bytes (header, codes, scales and raw biases).

Usage::

    python examples/train_and_bundle.py                  # 1500 steps, ~1 min on one CPU core
    python examples/train_and_bundle.py --steps 3000 --out /tmp/mlp.mcnc.safetensors
    python examples/train_and_bundle.py --quick          # smoke run (< 20 s)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core

HIDDEN = 512
DATA_SEED = 42


def load_data(num_samples: int = 5000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mnist1d generated locally (no download): x (4000, 40), y (4000,), x_test (1000, 40), y_test."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    args.num_samples = num_samples  # 80 % train, 20 % test
    data = make_dataset(args)
    x = torch.tensor(data["x"], dtype=torch.float32)
    xt = torch.tensor(data["x_test"], dtype=torch.float32)
    return x, torch.tensor(data["y"]).long(), xt, torch.tensor(data["y_test"]).long()


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 1500; --quick: 60)")
    p.add_argument("--lr", type=float, default=None, help="code learning rate (default: param_groups' recommended)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="bundle path (default: a temporary file)")
    p.add_argument("--quick", action="store_true", help="smoke run for the test suite: 60 steps on 2000 samples")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    steps = a.steps or (60 if a.quick else 1500)
    t_start = time.perf_counter()

    x, y, xt, yt = load_data(2000 if a.quick else 5000)
    torch.manual_seed(a.seed)
    model = make_mlp()
    cfg = mcnc_core.MCNCConfig(seed=a.seed, init_seed=a.seed)
    mcnc_core.compress(model, cfg)

    # Train the codes (alpha), scales (beta) and raw biases, each at its recommended rate.
    opt = torch.optim.Adam(mcnc_core.param_groups(model, lr=a.lr))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0
    acc_trained = accuracy(model, xt, yt)

    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp) / "mnist1d_mlp.mcnc.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        bundle_bytes = mcnc_core.save_bundle(mcnc_core.export_bundle(model), out)
        t1 = time.perf_counter()
        bundle = mcnc_core.load_bundle(out)
        state = mcnc_core.reconstruct(bundle)
        rebuild_s = time.perf_counter() - t1
        fresh = make_mlp()
        fresh.load_state_dict(state, strict=True)
        # The uncompressed reference: the same weights as a float32 safetensors file.
        dense_path = Path(tmp) / "dense.safetensors"
        save_file({k: v.float().contiguous() for k, v in state.items()}, dense_path)
        dense_bytes = dense_path.stat().st_size

    with torch.no_grad():
        model.eval()
        max_diff = float((model(xt) - fresh(xt)).abs().max())
    if max_diff > 1e-5:
        raise SystemExit(f"reconstructed model differs from the trained one: max |logit diff| = {max_diff:g}")
    acc_rebuilt = accuracy(fresh, xt, yt)
    n_params = sum(t.numel() for t in state.values())

    print(f"model: MLP 40-{HIDDEN}-{HIDDEN}-10, {n_params} params; config: {cfg.to_dict()}")
    rates = ", ".join(f"{g['name']} {g['initial_lr']:g}" for g in opt.param_groups)
    print(f"steps: {steps}  lr: {rates}  train time: {train_s:.1f} s")
    print(f"test accuracy (trained):       {100 * acc_trained:.2f} %")
    print(f"test accuracy (reconstructed): {100 * acc_rebuilt:.2f} %")
    print(f"max |logit diff| trained vs reconstructed: {max_diff:.3g}")
    print(f"stored numbers: {bundle.stored_numbers}")
    print(f"bundle bytes: {bundle_bytes}")
    print(f"uncompressed bytes (float32 safetensors): {dense_bytes}")
    print(f"ratio: {dense_bytes / bundle_bytes:.1f}x")
    print(f"load + reconstruct time: {1000 * rebuild_s:.1f} ms")
    print(f"total time: {time.perf_counter() - t_start:.1f} s")
    if a.out is not None:
        print(f"bundle saved to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
