"""One-factor-at-a-time ablation of MCNC's defaults on mnist1d (full mode, MLP 40-256-256-10).

Around a base point (k=8, chunk_size=1024, width=64, depth=2, bound L=10, alpha_init=1.0,
Adam lr = --base-lr), each row changes one factor: the k/d pair (ratio ~100 on the targeted
weights), the bound L, the generator width and depth, alpha_init and the learning rate. Every
row is trained for the same number of Adam steps (minibatch 256, cosine decay to 0) with each
seed; the seed drives the model init, the codes' init, the batch order and the generator seed.
The data set is fixed (mnist1d, ``args.seed = 42``, 4000 train / 1000 test).

Reported per row: mean ± std test accuracy at the end of the budget (never the best step),
stored numbers (codes, scales and raw biases), the ratio on the targeted weights, and the
overall ratio = float32 safetensors bytes of the full state dict / bundle bytes.

Usage::

    python benchmarks/ablation.py                      # full run (~10 min on 2 CPU cores)
    python benchmarks/ablation.py --out docs/ablation.md
    python benchmarks/ablation.py --quick              # 1 setting, 100 steps, 2000 samples (smoke test)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core

DATA_SEED = 42


@dataclass(frozen=True)
class Setting:
    """One row of the ablation; ``compressed=False`` is the uncompressed reference MLP."""

    factor: str
    k: int = 8
    chunk_size: int = 1024
    width: int = 64
    depth: int = 2
    bound: float = 10.0
    alpha_init: float = 1.0
    lr: float | None = None  # None: the run's base lr
    compressed: bool = True

    def label(self, base_lr: float) -> str:
        if not self.compressed:
            return f"uncompressed MLP (lr {self.lr_or(base_lr):g})"
        return (
            f"k={self.k} d={self.chunk_size} w={self.width} depth={self.depth} "
            f"L={self.bound:g} a0={self.alpha_init:g} lr={self.lr_or(base_lr):g}"
        )

    def lr_or(self, base_lr: float) -> float:
        return base_lr if self.lr is None else self.lr


def settings_full() -> list[Setting]:
    base = Setting("base")
    rows = [Setting("reference", lr=3e-3, compressed=False), base]
    rows += [dataclasses.replace(base, factor="k/d", k=k, chunk_size=d) for k, d in [(4, 400), (8, 800), (16, 1600)]]
    rows += [dataclasses.replace(base, factor="L", bound=b) for b in (1.0, 5.0, 20.0, 40.0)]
    rows += [dataclasses.replace(base, factor="width", width=w) for w in (32, 128)]
    rows += [dataclasses.replace(base, factor="depth", depth=n) for n in (1, 3)]
    rows += [dataclasses.replace(base, factor="alpha_init", alpha_init=a) for a in (0.25, 0.5)]
    rows += [dataclasses.replace(base, factor="lr", lr=lr) for lr in (0.005, 0.02, 0.1)]
    return rows


def load_data(num_samples: int = 5000) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mnist1d generated locally (never downloaded): x (4000, 40), y (4000,), x_test, y_test."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    args.num_samples = num_samples  # 80 % train, 20 % test
    data = make_dataset(args)
    x = torch.tensor(data["x"], dtype=torch.float32)
    xt = torch.tensor(data["x_test"], dtype=torch.float32)
    return x, torch.tensor(data["y"]).long(), xt, torch.tensor(data["y_test"]).long()


def make_mlp(hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, data: tuple[Tensor, ...], *, lr: float, steps: int, seed: int, batch: int = 256) -> float:
    """Adam + cosine decay to 0 over ``steps`` minibatches; returns the final test accuracy."""
    x, y, xt, yt = data
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return accuracy(model, xt, yt)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def run_one(s: Setting, seed: int, data: tuple[Tensor, ...], *, steps: int, base_lr: float) -> dict[str, float]:
    torch.manual_seed(seed)
    model = make_mlp()
    dense_bytes = len(st_save({k: v.float().contiguous() for k, v in model.state_dict().items()}))
    n_params = sum(p.numel() for p in model.parameters())
    if s.compressed:
        cfg = mcnc_core.MCNCConfig(
            k=s.k,
            chunk_size=s.chunk_size,
            width=s.width,
            depth=s.depth,
            bound=s.bound,
            alpha_init=s.alpha_init,
            seed=seed,
        )
        mcnc_core.compress(model, cfg)
    t0 = time.perf_counter()
    acc = train(model, data, lr=s.lr_or(base_lr), steps=steps, seed=seed)
    seconds = time.perf_counter() - t0
    if not s.compressed:
        return {"acc": acc, "stored": n_params, "target_ratio": 1.0, "ratio": 1.0, "seconds": seconds}
    bundle = mcnc_core.export_bundle(model)
    nbytes = len(bundle.to_bytes())
    codes = bundle.alpha.numel() + bundle.beta.numel()
    targeted = sum(e.numel for e in bundle.manifest if e.storage == "mcnc")
    return {
        "acc": acc,
        "stored": bundle.stored_numbers,
        "target_ratio": targeted / codes,
        "ratio": dense_bytes / nbytes,
        "seconds": seconds,
    }


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def format_table(rows: list[tuple[Setting, list[dict[str, float]]]], base_lr: float) -> str:
    lines = [
        "| factor | setting | test acc % (mean ± std) | stored numbers | ratio on targets | overall ratio (bytes) |"
        " s/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, results in rows:
        m, sd = mean_std([100 * r["acc"] for r in results])
        r0 = results[0]
        secs = statistics.fmean(r["seconds"] for r in results)
        lines.append(
            f"| {s.factor} | {s.label(base_lr)} | {m:.1f} ± {sd:.1f} | {int(r0['stored'])} | "
            f"{r0['target_ratio']:.1f}x | {r0['ratio']:.1f}x | {secs:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one setting, 100 steps, one seed, 2000 samples (smoke test)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 1500; quick: 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; quick: 0)")
    p.add_argument("--base-lr", type=float, default=0.05, help="Adam lr of the base point (default 0.05)")
    p.add_argument("--factors", nargs="+", default=None, help="only rows of these factors (e.g. base L lr)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table (and command) here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = a.steps or (100 if a.quick else 1500)
    seeds = a.seeds or ([0] if a.quick else [0, 1])
    settings = [Setting("base")] if a.quick else settings_full()
    if a.factors is not None:
        settings = [s for s in settings if s.factor in a.factors]

    t_start = time.perf_counter()
    data = load_data(2000 if a.quick else 5000)
    rows: list[tuple[Setting, list[dict[str, float]]]] = []
    for s in settings:
        results = [run_one(s, seed, data, steps=steps, base_lr=a.base_lr) for seed in seeds]
        rows.append((s, results))
        accs = ", ".join(f"{100 * r['acc']:.1f}" for r in results)
        print(f"{s.factor:>10} | {s.label(a.base_lr)} | acc {accs}", flush=True)
        for r in results:
            if not all(math.isfinite(v) for v in r.values()):
                raise SystemExit(f"non-finite result for {s}: {r}")
    table = format_table(rows, a.base_lr)
    total = time.perf_counter() - t_start
    command = " ".join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    info = (
        f"steps={steps} batch=256 seeds={seeds} base_lr={a.base_lr:g} data_seed={DATA_SEED} "
        f"threads={a.threads} torch={torch.__version__} python={platform.python_version()} "
        f"cpu={platform.machine()} total={total:.0f}s"
    )
    print()
    print(table)
    print(info)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"Command: `{command}`\n\n{info}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
