"""Ablation of MCNC's defaults and training recipe, chosen on a validation split.

Task (the one the recipe is judged on): mnist1d generated locally (``args.seed = 42``; 4000
train / 1000 test; the last 500 training samples, after a fixed shuffle, are the validation
split and never trained on), MLP 40-128-128-10 (22,784 weights), full mode, a 2 % stored budget
on the weights (456 numbers; biases raw and trained), ``min_numel = 1``, ``chunk_size`` the
smallest whose codes + scales fit the budget. Adam through ``mcnc_core.param_groups``, cosine
decay to 0, minibatch 128, 800 steps; every number is the accuracy at the last step.

One factor is varied at a time around a base point; every row is judged on VALIDATION
(mean ± std over ``--seeds``). ``--test`` then retrains the chosen base point (and the landed v1
recipe for reference) on all 4000 training samples (train + validation) with fresh seeds and
reports test accuracy: test data never enters a choice.
A seed drives the model init, the initial codes (``init_seed``), the batch order and the
generator seed.

Usage::

    python benchmarks/ablation.py --out docs/ablation-runs/main.md          # all rows, seeds 0 1
    python benchmarks/ablation.py --factors base lr --seeds 0 1 2
    python benchmarks/ablation.py --test --seeds 10 11 12                   # base point on test
    python benchmarks/ablation.py --quick                                   # smoke test (~10 s)
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
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core
from benchmarks.baselines.common import fit
from mcnc_core.manifest import factor_shapes

DATA_SEED = 42
VAL = 500
BUDGET = 0.02
SHAPES = [(128, 40), (128, 128), (10, 128)]


@dataclass(frozen=True)
class Setting:
    """One row; ``lr`` is the code lr (``param_groups``), ``scale_lr``/``raw_lr`` None = its ratio."""

    factor: str
    k: int = 8
    width: int = 64
    depth: int = 2
    bound: float = 30.0
    rank: int = 128
    version: int = 2
    lr: float = 0.05
    scale_lr: float | None = None
    raw_lr: float | None = None
    one_lr: bool = False  # the landed recipe: one Adam lr for codes, scales and biases
    compressed: bool = True

    def label(self) -> str:
        if not self.compressed:
            return f"uncompressed MLP (lr {self.lr:g})"
        lrs = f"lr={self.lr:g} (all)" if self.one_lr else f"lr={self.lr:g}"
        if self.scale_lr is not None:
            lrs += f" scale_lr={self.scale_lr:g}"
        if self.raw_lr is not None:
            lrs += f" raw_lr={self.raw_lr:g}"
        return f"v{self.version} k={self.k} w={self.width} depth={self.depth} L={self.bound:g} rank={self.rank} {lrs}"


BASE = Setting("base")
LANDED = Setting("landed v1 recipe", bound=10.0, rank=0, version=1, lr=0.05, one_lr=True)


def settings_full(base: Setting = BASE) -> list[Setting]:
    """One-factor-at-a-time rows around ``base`` (values equal to the base's are skipped)."""
    r = dataclasses.replace
    rows = [Setting("reference", lr=3e-3, compressed=False), LANDED, base]
    axes = {
        "lr": [0.005, 0.01, 0.02, 0.05, 0.1],
        "bound": [10.0, 30.0, 60.0, 100.0],
        "rank": [0, 16, 40, 128],
        "k": [4, 8, 16],
        "width": [32, 64, 256],
        "scale_lr": [0.005, 0.1],
        "raw_lr": [0.002, 0.05],
    }
    for name, values in axes.items():
        rows += [r(base, factor=name, **{name: v}) for v in values if getattr(base, name) != v]
    # generator v1 (omega_0 = L = 10, codes in [-10, 10]) with the code lr scaled to its 10x code range
    rows.append(r(base, factor="version", version=1, bound=10.0, lr=base.lr * 10.0))
    return rows


def parse_overrides(items: list[str]) -> dict[str, float | int]:
    """``["lr=0.05", "bound=60"]`` -> fields of ``Setting`` (ints stay ints)."""
    out: dict[str, float | int] = {}
    fields = {f.name: f.type for f in dataclasses.fields(Setting)}
    for item in items:
        key, _, value = item.partition("=")
        if key not in fields or key in ("factor", "one_lr", "compressed"):
            raise SystemExit(f"--base: unknown setting {key!r}")
        out[key] = int(value) if key in ("k", "width", "depth", "rank", "version") else float(value)
    return out


def load_data(num_samples: int = 5000) -> tuple[Tensor, ...]:
    """(x_train, y_train, x_val, y_val, x_test, y_test); mnist1d generated locally, never downloaded."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    args.num_samples = num_samples
    d = make_dataset(args)
    x, y = torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["y"]).long()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(DATA_SEED))
    tr, va = perm[:-VAL], perm[-VAL:]
    xt, yt = torch.tensor(d["x_test"], dtype=torch.float32), torch.tensor(d["y_test"]).long()
    return x[tr], y[tr], x[va], y[va], xt, yt


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def chunk_size_for(k: int, rank: int, budget: int) -> int:
    """The smallest chunk size whose codes + scales for ``SHAPES`` fit ``budget`` numbers."""

    def numbers(d: int) -> int:
        return sum(-(-math.prod(f) // d) for s in SHAPES for f in factor_shapes(s, rank)) * (k + 1)

    lo, hi = 2, 1 << 20
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if numbers(mid) <= budget else (mid + 1, hi)
    return lo


def run_one(s: Setting, seed: int, x: Tensor, y: Tensor, xe: Tensor, ye: Tensor, *, steps: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = make_mlp()
    if s.compressed:
        budget = round(BUDGET * sum(math.prod(sh) for sh in SHAPES))
        cfg = mcnc_core.MCNCConfig(
            k=s.k,
            chunk_size=chunk_size_for(s.k, s.rank, budget),
            width=s.width,
            depth=s.depth,
            bound=s.bound,
            rank=s.rank,
            generator_version=s.version,
            seed=seed,
            init_seed=seed,
            min_numel=1,
        )
        mcnc_core.compress(model, cfg)
        if s.one_lr:
            groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": s.lr}]
        else:
            groups = mcnc_core.param_groups(model, lr=s.lr, scale_lr=s.scale_lr, raw_lr=s.raw_lr)
    else:
        groups = [{"params": list(model.parameters()), "lr": s.lr}]
    # The accuracy benchmark's loop: Adam (each group at its own rate), cosine to 0, batches of 128.
    seconds = fit(model, x, y, lr=s.lr, steps=steps, seed=seed, batch=128, params=groups)["seconds"]
    model.eval()
    with torch.no_grad():
        acc = float((model(xe).argmax(1) == ye).float().mean())
    if not s.compressed:
        return {"acc": acc, "stored": sum(p.numel() for p in model.parameters()), "seconds": seconds, "d": 0}
    bundle = mcnc_core.export_bundle(model)
    codes = bundle.alpha.numel() + bundle.beta.numel()
    return {"acc": acc, "stored": codes, "seconds": seconds, "d": bundle.spec.chunk_size}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def format_table(rows: list[tuple[Setting, list[dict[str, float]]]], split: str) -> str:
    lines = [
        f"| factor | setting | {split} acc % (mean ± std) | chunk size d | stored codes+scales | s/run |",
        "|---|---|---|---|---|---|",
    ]
    for s, results in rows:
        m, sd = mean_std([100 * r["acc"] for r in results])
        secs = statistics.fmean(r["seconds"] for r in results)
        r0 = results[0]
        cells = [s.factor, s.label(), f"{m:.1f} ± {sd:.1f}", str(int(r0["d"])), str(int(r0["stored"])), f"{secs:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="base point only, 60 steps, one seed, 2000 samples")
    p.add_argument("--test", action="store_true", help="train the base point and the landed recipe; report TEST")
    p.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 800; quick: 60)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1; quick: 0)")
    p.add_argument("--factors", nargs="+", default=None, help="only rows of these factors (e.g. base lr bound)")
    p.add_argument("--base", nargs="+", default=[], help="move the base point, e.g. --base lr=0.05 bound=60")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table (and command) here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = a.steps or (60 if a.quick else 800)
    seeds = a.seeds or ([0] if a.quick else [0, 1])
    base = dataclasses.replace(BASE, **parse_overrides(a.base))
    if a.quick:
        settings = [base]
    elif a.test:
        settings = [Setting("reference", lr=3e-3, compressed=False), LANDED, base]
    else:
        settings = settings_full(base)
    if a.factors is not None:
        settings = [s for s in settings if s.factor in a.factors]

    t_start = time.perf_counter()
    xtr, ytr, xva, yva, xte, yte = load_data(2000 if a.quick else 5000)
    split = "test" if a.test else "validation"
    xe, ye = (xva, yva)
    if a.test:  # settings were chosen on validation: retrain on all 4000 training samples, score on test
        xtr, ytr, xe, ye = torch.cat([xtr, xva]), torch.cat([ytr, yva]), xte, yte
    rows: list[tuple[Setting, list[dict[str, float]]]] = []
    for s in settings:
        results = [run_one(s, seed, xtr, ytr, xe, ye, steps=steps) for seed in seeds]
        rows.append((s, results))
        accs = ", ".join(f"{100 * r['acc']:.1f}" for r in results)
        print(f"{s.factor:>16} | {s.label()} | {split} acc {accs}", flush=True)
        for r in results:
            if not all(math.isfinite(v) for v in r.values()):
                raise SystemExit(f"non-finite result for {s}: {r}")
    table = format_table(rows, split)
    total = time.perf_counter() - t_start
    command = " ".join(["python", "benchmarks/ablation.py", *(sys.argv[1:] if argv is None else argv)])
    info = (
        f"steps={steps} batch=128 seeds={seeds} budget={BUDGET:g} split={split} data_seed={DATA_SEED} "
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
