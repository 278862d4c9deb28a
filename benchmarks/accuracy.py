"""Accuracy at matched stored size: MCNC vs PRANC, NOLA, low rank, pruning and quantization.

Validation-tuned and reported on test. Every task has a train / validation / test split; the
validation split is carved from the training data with a fixed seed and the test split is never
used for any choice. For every trained method and budget, the learning rate is chosen from a
3-point grid (``LR_GRID``) by validation accuracy with one tuning seed (``TUNE_SEED``, not a
reported seed); then each reported seed trains with that lr and is evaluated on test. Every
method trains through one loop (``benchmarks/baselines/common.py``: Adam, cosine decay to 0,
minibatch 128, same steps; final-step accuracy, never the best one).

Tasks (no download; the model's Linear/Conv *weights* are what each method compresses):

* ``mnist1d-mlp``: mnist1d (``args.seed = 42``, 5000 samples: 4000 train -> 3400 train + 600
  validation, 1000 test), MLP 40-128-128-10 (22,784 weights);
* ``mnist1d-cnn``: same data, 1-D CNN 3 x Conv1d(k=5, 32 ch, strides 1-2-2) + Linear(320, 10) (13,600);
* ``digits-cnn``: scikit-learn's 8x8 digits (1437 -> 1222 train + 215 validation, 360 test),
  2-D CNN Conv 1->16->32, max-pool, Linear 512->32->10 (21,456);
* ``mnist1d-60k``: mnist1d with ``num_samples = 60000`` (48000 -> 43000 train + 5000 validation,
  12000 test; generated once and cached under ``$MCNC_ACC_CACHE`` or /tmp), MLP 40-512-256-10 with
  BatchNorm after the hidden layers (154,112 weights; BatchNorm parameters raw and not counted, as
  in the paper), budgets 1 % and 3 %, 3000 steps.

Methods: ``dense``; ``MCNC-oc`` (``mcnc_core.compress`` with over-complete factors: rank 128 on
the MLPs, 64 on the CNNs) and ``MCNC-r0`` (rank 0, the weights themselves on the manifold), both
with the library's default generator and trained with ``torch.optim.Adam(mcnc_core.param_groups(
model, lr))`` -- the grid is over that ``lr``; ``PRANC``; ``NOLA`` (rank 8); ``low rank`` (where
rank 1 fits); magnitude ``pruning``; post-training ``int8`` / ``int4`` of the dense model.
Raw parameters (biases, BatchNorm) of every reparameterised method train at their own rate
(``mcnc_core.param_groups``' ratio for MCNC, ``RAW_LR`` for the baselines).

``--seconds S`` is the equal-wall-clock mode: each run first times ``PROBE_STEPS`` training steps
of its own model (then restores it), and trains for ``S / time-per-step`` steps with the cosine
schedule over exactly that many steps, so the schedule completes.

Usage::

    python benchmarks/accuracy.py --tasks mnist1d-mlp --json docs/accuracy-runs/mlp.json
    python benchmarks/accuracy.py --tasks mnist1d-60k --seconds 60 --lr-from docs/accuracy-runs/60k.json --json x.json
    python benchmarks/accuracy.py --merge docs/accuracy-runs/*.json --doc docs/benchmarks.md --plot docs/accuracy.png
    python benchmarks/accuracy.py --quick     # mnist1d MLP, 2 %, 1 seed, 60 steps
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core
import mcnc_core.manifest
from benchmarks.baselines import NOLA, PRANC, LowRank, MagnitudePruned, quantize_model, target_weights
from benchmarks.baselines.common import accuracy, fan_in, fit
from benchmarks.baselines.lora import lowrank_numbers
from benchmarks.baselines.pruning import pruning_bits_per_weight

DATA_SEED = 42
SPLIT_SEED = 7  # carves the validation split out of the training data
TUNE_SEED = 100  # the one seed learning rates are chosen with (never a reported seed)
NOLA_RANK = 8
PROBE_STEPS = 25  # --seconds: timed steps (after 5 untimed) that fix the step count
HAS_PARAM_GROUPS = hasattr(mcnc_core, "param_groups")
# 3-point grids, a factor ~3 apart, centred on each method's usual rate (MCNC: around the
# library's recommended code lr, param_groups' ``lr``).
if HAS_PARAM_GROUPS:
    import mcnc_core.recipe
_MCNC_LR = mcnc_core.recipe.RECOMMENDED_LR["full"][0] if HAS_PARAM_GROUPS else 0.1
# Baselines' raw parameters (biases, BatchNorm) at the middle of their grid: the same rate MCNC's
# recipe gives raw parameters at the middle of its grid (both scale with the method's one knob).
RAW_LR = mcnc_core.recipe.RECOMMENDED_LR["full"][2] if HAS_PARAM_GROUPS else 1e-2
_MCNC_GRID = tuple(float(f"{_MCNC_LR * f:.2g}") for f in (1 / 3, 1, 3))
LR_GRID: dict[str, tuple[float, ...]] = {
    "dense": (1e-3, 3e-3, 1e-2),
    "MCNC-oc": _MCNC_GRID,
    "MCNC-r0": _MCNC_GRID,
    "PRANC": (0.01, 0.03, 0.1),
    "NOLA": (3e-3, 1e-2, 3e-2),
    "low rank": (1e-3, 3e-3, 1e-2),
    "pruning": (1e-3, 3e-3, 1e-2),
}
TRAINED = list(LR_GRID)
METHODS = [*TRAINED, "int8", "int4"]
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

# x_train, y_train, x_val, y_val, x_test, y_test
Data = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


# ----------------------------------------------------------------------------- data
def _mnist1d(num_samples: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cache_dir = Path(os.environ.get("MCNC_ACC_CACHE", "/tmp/mcnc-accuracy-cache"))
    cache = cache_dir / f"mnist1d_{num_samples}_{DATA_SEED}.pt"
    if num_samples > 5000 and cache.exists():
        return torch.load(cache)
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    args.num_samples = num_samples
    d = make_dataset(args)
    f = torch.float32
    out = (
        torch.tensor(d["x"], dtype=f),
        torch.tensor(d["y"]).long(),
        torch.tensor(d["x_test"], dtype=f),
        torch.tensor(d["y_test"]).long(),
    )
    if num_samples > 5000:
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(out, cache)
    return out


def load_mnist1d() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mnist1d, 5000 samples: 4000 train, 1000 test (train, test: no validation split)."""
    return _mnist1d(5000)


def load_mnist1d_60k() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mnist1d, 60000 samples: 48000 train, 12000 test (cached after the first call)."""
    return _mnist1d(60000)


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target).long()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(DATA_SEED))
    tr, te = perm[:1437], perm[1437:]
    return x[tr], y[tr], x[te], y[te]


def with_validation(data: tuple[Tensor, Tensor, Tensor, Tensor], n_val: int) -> Data:
    """Carve ``n_val`` validation samples out of the training data (fixed seed ``SPLIT_SEED``)."""
    x, y, xt, yt = data
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    va, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], x[va], y[va], xt, yt


# ----------------------------------------------------------------------------- models
def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def make_cnn1d() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 40)),
        nn.Conv1d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(32, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv1d(32, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(320, 10),
    )


def make_cnn2d() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def make_bn_mlp() -> nn.Module:
    """40-512-256-10 with BatchNorm after each hidden Linear (those Linears have no bias: BN's shift is it)."""
    return nn.Sequential(
        nn.Linear(40, 512, bias=False),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


@dataclass(frozen=True)
class Task:
    load: Callable[[], tuple[Tensor, Tensor, Tensor, Tensor]]
    n_val: int
    make: Callable[[], nn.Module]
    mcnc_rank: int  # MCNC-oc's factor rank (over-complete: >= min(rows, cols) of most layers)
    budgets: tuple[float, ...]
    steps: int


TASKS: dict[str, Task] = {
    "mnist1d-mlp": Task(load_mnist1d, 600, make_mlp, 128, (0.01, 0.02, 0.05), 800),
    "mnist1d-cnn": Task(load_mnist1d, 600, make_cnn1d, 64, (0.01, 0.02, 0.05), 800),
    "digits-cnn": Task(load_digits, 215, make_cnn2d, 64, (0.01, 0.02, 0.05), 800),
    "mnist1d-60k": Task(load_mnist1d_60k, 5000, make_bn_mlp, 128, (0.01, 0.03), 3000),
}
_DATA: dict[str, Data] = {}


def task_data(task: str) -> Data:
    if task not in _DATA:
        t = TASKS[task]
        _DATA[task] = with_validation(t.load(), t.n_val)
    return _DATA[task]


# ----------------------------------------------------------------------------- budgets
def mcnc_rank_of(shape: tuple[int, ...], rank: int) -> int:
    """The rank ``compress`` gives a target: any ``r >= 1`` on >= 2-D tensors once the library has
    over-complete factors (``param_groups`` landed with them); before that, only ``r < min(rows, cols)``."""
    if rank == 0 or len(shape) < 2:
        return 0
    if HAS_PARAM_GROUPS:
        return rank
    return rank if rank < min(shape[0], fan_in(shape)) else 0


def mcnc_numbers(shapes: list[tuple[int, ...]], chunk: int, rank: int, k: int) -> int:
    """Codes + scales ``compress`` creates for these targets (per-tensor, per-factor chunking)."""
    total = 0
    for s in shapes:
        for f in mcnc_core.manifest.factor_shapes(s, mcnc_rank_of(s, rank)):
            total += -(-math.prod(f) // chunk) * (k + 1)
    return total


def mcnc_chunk(shapes: list[tuple[int, ...]], budget: int, rank: int, k: int) -> int | None:
    """Smallest chunk size whose stored numbers fit ``budget`` (None if even one chunk per factor does not)."""
    biggest = max(math.prod(f) for s in shapes for f in mcnc_core.manifest.factor_shapes(s, mcnc_rank_of(s, rank)))
    if mcnc_numbers(shapes, biggest, rank, k) > budget:
        return None
    lo, hi = 2, biggest
    while lo < hi:
        mid = (lo + hi) // 2
        if mcnc_numbers(shapes, mid, rank, k) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def lowrank_rank(shapes: list[tuple[int, ...]], budget: int) -> int:
    rank = 0
    while lowrank_numbers(shapes, rank + 1) <= budget and rank < max(min(s[0], fan_in(s)) for s in shapes):
        rank += 1
    return rank


# ----------------------------------------------------------------------------- memory
def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def frozen_bytes(model: nn.Module) -> int:
    """Bytes of the frozen random state a method trains with: PRANC's basis, NOLA's bases, MCNC's
    generator (buffers, BatchNorm statistics and pruning masks excluded)."""
    return sum(
        b.numel() * b.element_size()
        for n, b in model.named_buffers()
        if "running_" not in n and "num_batches" not in n and not n.startswith("mask")
    )


# ----------------------------------------------------------------------------- one run
def _build(task: str, method: str, frac: float | None, seed: int) -> dict:
    """The model of one run with its param groups and stored sizes (``na`` when the budget cannot hold it)."""
    t = TASKS[task]
    torch.manual_seed(seed)
    net = t.make()
    shapes = [tuple(p.shape) for p in target_weights(net).values()]
    n_weights = sum(math.prod(s) for s in shapes)
    n_raw = sum(p.numel() for p in net.parameters()) - n_weights
    budget = round((1.0 if frac is None else frac) * n_weights)
    b: dict = {"budget": budget, "n_weights": n_weights, "n_raw": n_raw, "detail": ""}
    if method in ("dense", "pruning"):
        model = net if method == "dense" else MagnitudePruned(net)
        b.update(model=model, numbers=n_weights)
        if method == "pruning":
            bits = pruning_bits_per_weight(shapes)
            b.update(keep=(budget * 32) // bits, bits=bits, detail=f"{(budget * 32) // bits} kept x {bits} bits")
    elif method.startswith("MCNC"):
        rank = t.mcnc_rank if method == "MCNC-oc" else 0
        k = mcnc_core.MCNCConfig().k
        chunk = mcnc_chunk(shapes, budget, rank, k)
        if chunk is None:
            return {**b, "na": "one chunk per factor exceeds the budget"}
        extra = {"init_seed": seed} if HAS_PARAM_GROUPS else {}
        cfg = mcnc_core.MCNCConfig(chunk_size=chunk, rank=rank, seed=seed, min_numel=1, **extra)
        mcnc_core.compress(net, cfg)
        ranks = sorted({mcnc_rank_of(s, rank) for s in shapes})
        b.update(model=net, numbers=mcnc_numbers(shapes, chunk, rank, k), cfg=cfg)
        b["detail"] = f"r={'/'.join(map(str, ranks))} k={cfg.k} d={chunk} L={cfg.bound:g}"
        if hasattr(cfg, "generator_version"):
            b["detail"] += f" gen v{cfg.generator_version}"
    elif method in ("PRANC", "NOLA", "low rank"):
        if method == "PRANC":
            model = PRANC(net, budget, seed, max_bytes=8 << 30)
        elif method == "NOLA":
            model = NOLA(net, budget, seed, rank=NOLA_RANK)
            b["detail"] = f"r={NOLA_RANK}"
        else:
            rank = lowrank_rank(shapes, budget)
            if rank == 0:
                return {**b, "na": f"rank 1 needs {lowrank_numbers(shapes, 1)} numbers"}
            model = LowRank(net, rank, seed)
            b["detail"] = f"r={rank}"
        b.update(model=model, numbers=model.stored_numbers())
    else:
        raise ValueError(method)
    return b


def _groups(method: str, model: nn.Module, lr: float) -> list[dict] | None:
    """Adam param groups: MCNC's from the library's recipe; baselines: their numbers at ``lr``, raw at RAW_LR."""
    if method in ("dense", "pruning"):
        return None
    if method.startswith("MCNC"):
        if HAS_PARAM_GROUPS:
            return mcnc_core.param_groups(model, lr=lr)
        codes = [p for n, p in model.named_parameters() if p.requires_grad and ".mcnc_" in f".{n}"]
        ids = {id(p) for p in codes}
        raw = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": codes, "lr": lr}, {"params": raw, "lr": RAW_LR}]
    groups = [{"params": model.method_parameters(), "lr": lr}]
    if model.raw_parameters():  # one knob, as param_groups: raw at RAW_LR x (lr / the grid's middle)
        grid = LR_GRID[method]
        groups.append({"params": model.raw_parameters(), "lr": RAW_LR * lr / grid[len(grid) // 2]})
    return groups


def _train(method: str, b: dict, x: Tensor, y: Tensor, lr: float, steps: int, seed: int) -> dict:
    model = b["model"]
    if method == "pruning":
        half = steps // 2
        f1 = fit(model, x, y, lr=lr, steps=half, seed=seed)
        model.prune(b["keep"])
        f2 = fit(model, x, y, lr=lr, steps=steps - half, seed=seed + 10_000)
        return {"seconds": f1["seconds"] + f2["seconds"], "train_loss": f2["train_loss"], "steps": steps}
    return fit(model, x, y, lr=lr, steps=steps, seed=seed, params=_groups(method, model, lr))


def probe_seconds_per_step(method: str, b: dict, x: Tensor, y: Tensor, lr: float) -> float:
    """Time ``PROBE_STEPS`` steps (after 5 untimed) of this run's own model, then restore its state."""
    model = b["model"]
    saved = copy.deepcopy(model.state_dict())
    groups = _groups(method, model, lr)
    params = groups if groups is not None else [p for p in model.parameters() if p.requires_grad]
    fit(model, x, y, lr=lr, steps=5, seed=12345, params=params)
    groups = _groups(method, model, lr)
    params = groups if groups is not None else [p for p in model.parameters() if p.requires_grad]
    s = fit(model, x, y, lr=lr, steps=PROBE_STEPS, seed=54321, params=params)["seconds"] / PROBE_STEPS
    model.load_state_dict(saved)  # pruning's masks are still all ones here: nothing else to undo
    return s


def run_one(
    task: str,
    method: str,
    frac: float | None,
    seed: int,
    lr: float,
    *,
    steps: int | None,
    seconds: float | None,
    on: str,
) -> dict:
    """Train ``method`` at budget ``frac`` with ``seed`` and ``lr``; evaluate on ``on`` ("val" or "test")."""
    x, y, xv, yv, xt, yt = task_data(task)
    out: dict = {"task": task, "method": method, "frac": frac, "seed": seed, "lr": lr, "eval": on}
    _reset_peak_rss()
    t0 = time.perf_counter()
    b = _build(task, method, frac, seed)
    out["budget"] = b["budget"]
    if "na" in b:
        return {**out, "na": b["na"]}
    setup = time.perf_counter() - t0
    if seconds is not None:
        per_step = probe_seconds_per_step(method, b, x, y, lr)
        steps = max(1, int(seconds / per_step))
        out.update(seconds_budget=seconds, probe_s_per_step=per_step)
    assert steps is not None
    tr = _train(method, b, x, y, lr, steps, seed)
    model = b["model"]
    acc = accuracy(model, *((xv, yv) if on == "val" else (xt, yt)))
    numbers = b["numbers"]
    n_raw = b["n_raw"]
    if method == "pruning":
        numbers = model.stored_numbers()
        weight_bytes = (numbers * b["bits"] + 7) // 8
    elif method == "dense":
        weight_bytes = 4 * numbers
    elif method.startswith("MCNC"):
        bundle = mcnc_core.export_bundle(model)
        real = bundle.alpha.numel() + bundle.beta.numel()
        assert real == numbers, (real, numbers, b["detail"])
        weight_bytes = 4 * numbers
        out["bundle_bytes"] = len(bundle.to_bytes())
    else:
        weight_bytes = 4 * numbers + (8 if method in ("PRANC", "NOLA") else 0)  # + the 64-bit seed
    out.update(
        acc=acc,
        train_loss=tr["train_loss"],
        steps=tr["steps"],
        seconds=tr["seconds"],
        setup_seconds=setup,
        numbers=numbers,
        stored_bytes=weight_bytes + 4 * n_raw,
        dense_bytes=4 * (b["n_weights"] + n_raw),
        frozen_bytes=frozen_bytes(model),
        peak_rss_bytes=_peak_rss_bytes(),
        detail=b["detail"],
    )
    if method == "dense":
        out["model"] = model
    return out


def quantized(dense_run: dict, bits: int) -> dict:
    _, _, xv, yv, xt, yt = task_data(dense_run["task"])
    qnet, qbytes = quantize_model(dense_run["model"], bits)
    n_raw = dense_run["dense_bytes"] // 4 - dense_run["numbers"]
    return {
        **{k: dense_run[k] for k in ("task", "seed", "dense_bytes", "numbers", "lr", "eval", "steps")},
        "method": f"int{bits}",
        "frac": None,
        "budget": None,
        "acc": accuracy(qnet, xt, yt) if dense_run["eval"] == "test" else accuracy(qnet, xv, yv),
        "stored_bytes": qbytes + 4 * n_raw,
        "seconds": 0.0,
        "detail": "post-training, per-tensor, of the dense run",
    }


# ----------------------------------------------------------------------------- reporting
def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def setting_of(r: dict) -> str:
    return f"{r['seconds_budget']:g} s" if r.get("seconds_budget") is not None else f"{r['steps']} steps"


def _key(r: dict) -> tuple[str, str, float | None, str]:
    return (r["task"], r["setting"], r["frac"], r["method"])


def group(results: list[dict], phase: str = "report") -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in results:
        if r.get("phase", "report") == phase:
            out.setdefault(_key(r), []).append(r)
    return out


def _order(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _mem(r: dict) -> str:
    fb = r.get("frozen_bytes")
    if fb is None:
        return ""
    rss = r.get("peak_rss_bytes")
    return f"{fb / 2**20:.1f}" + (f" / {rss / 2**20:.0f}" if rss else "")


def _tuning_note(results: list[dict], key: tuple) -> str:
    """``0.01: 40.2, **0.03: 44.1**, 0.1: 43.0`` — validation accuracy per grid lr (the chosen one bold)."""
    task, setting, frac, method = key
    rows = [r for r in results if r.get("phase") == "tune" and r["task"] == task and r["frac"] == frac]
    rows = [r for r in rows if r["method"] == method and r.get("tuned_for", setting) == setting and "na" not in r]
    if not rows:
        return ""
    best = max(rows, key=lambda r: r["acc"])
    return ", ".join(
        (f"**{r['lr']:g}: {100 * r['acc']:.1f}**" if r is best else f"{r['lr']:g}: {100 * r['acc']:.1f}")
        for r in sorted(rows, key=lambda r: r["lr"])
    )


def format_table(results: list[dict]) -> str:
    g = group(results)
    lines = [
        "| task | setting | budget | method | stored numbers (weights) | stored bytes | % of dense bytes |"
        " test acc % (mean ± std) | final train loss | lr: validation acc % per grid point | s/run (steps) |"
        " frozen MB / peak RSS MB | notes |",
        "|---|---|---|---|---:|---:|---:|---|---:|---|---:|---:|---|",
    ]
    keys = sorted(g, key=lambda k: (_task_order(k[0]), k[1], -1 if k[2] is None else k[2], _order(k[3])))
    # dense/int rows first within (task, setting)
    keys = sorted(keys, key=lambda k: (_task_order(k[0]), _setting_order(results, k[1]), k[2] is not None))
    for key in keys:
        task, setting, frac, method = key
        rs = g[key]
        label = "-" if frac is None else f"{100 * frac:g} %"
        if "na" in rs[0]:
            lines.append(f"| {task} | {setting} | {label} | {method} | - | - | - | n/a | | | | | {rs[0]['na']} |")
            continue
        m, sd = mean_std([100 * r["acc"] for r in rs])
        r0 = rs[0]
        note = r0.get("detail", "")
        if "bundle_bytes" in r0:
            note += f"; bundle file {r0['bundle_bytes']} B"
        flag = _flag(g, key, m) if method == "MCNC-oc" else ""
        loss = f"{statistics.fmean(r['train_loss'] for r in rs):.3f}" if "train_loss" in r0 else ""
        tuning = _tuning_note(results, key)
        if not tuning and "lr_tuned_at" in r0:
            tuning = f"{r0['lr']:g} (chosen at {r0['lr_tuned_at']})"
        secs = statistics.fmean(r["seconds"] for r in rs)
        steps = sorted({r["steps"] for r in rs})
        steps_s = f"{steps[0]}" if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"
        time_s = "" if method.startswith("int") else f"{secs:.1f} ({steps_s})"
        lines.append(
            f"| {task} | {setting} | {label} | {method} | {r0['numbers']} | {r0['stored_bytes']} | "
            f"{100 * r0['stored_bytes'] / r0['dense_bytes']:.1f} | {_pm(m, sd, len(rs))}{flag} | {loss} | "
            f"{tuning} | {time_s} | {_mem(r0)} | {note} |"
        )
    return "\n".join(lines)


def _pm(m: float, sd: float, n: int) -> str:
    if n == 1:
        return f"{m:.1f} (1 seed)"
    return f"{m:.1f} ± {sd:.1f}" + (f" ({n} seeds)" if n == 2 else "")


def _task_order(task: str) -> int:
    return list(TASKS).index(task) if task in TASKS else len(TASKS)


def _setting_order(results: list[dict], setting: str) -> tuple[int, float, int]:
    """Equal-steps settings by their step count ("800 steps" before "3000 steps"), then the
    equal-time ones ("40 s"), then anything else in order of appearance."""
    order = list(dict.fromkeys(r["setting"] for r in results))
    number, _, unit = setting.partition(" ")
    with contextlib.suppress(ValueError):
        return ({"steps": 0, "s": 1}.get(unit, 2), float(number), order.index(setting))
    return (2, 0.0, order.index(setting))


def _means(g: dict, task: str, setting: str, frac: float, method: str) -> float | None:
    rs = g.get((task, setting, frac, method))
    if not rs or "na" in rs[0]:
        return None
    return statistics.fmean(100 * r["acc"] for r in rs)


def _flag(g: dict, key: tuple, m: float) -> str:
    task, setting, frac, _ = key
    worse = [o for o in ("PRANC", "NOLA") if (v := _means(g, task, setting, frac, o)) is not None and v > m]
    return f" **(< {', '.join(worse)})**" if worse else ""


def targets_table(results: list[dict]) -> str:
    """MCNC-oc against the issue's targets, per (task, setting, budget)."""
    g = group(results)
    cells = sorted(
        {(k[0], k[1], k[2]) for k in g if k[2] is not None},
        key=lambda c: (_task_order(c[0]), _setting_order(results, c[1]), c[2]),
    )
    lines = [
        "| task | setting | budget | MCNC-oc | MCNC-r0 | PRANC | NOLA | target | met? |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for task, setting, frac in cells:
        v = {m: _means(g, task, setting, frac, m) for m in ("MCNC-oc", "MCNC-r0", "PRANC", "NOLA")}
        if v["MCNC-oc"] is None:
            continue
        mc, pr, no = v["MCNC-oc"], v["PRANC"], v["NOLA"]
        big = task == "mnist1d-60k"
        if not big:
            base = [x for x in (pr, no) if x is not None]
            target = "≥ max(PRANC, NOLA)"
            ok = bool(base) and mc >= max(base)
            missing = not base
        elif setting.endswith(" s"):
            target = "> PRANC and ≥ NOLA + 4"
            ok = pr is not None and no is not None and mc > pr and mc >= no + 4
            missing = pr is None or no is None
        else:
            target = "≥ PRANC - 2 and ≥ NOLA + 4"
            ok = pr is not None and no is not None and mc >= pr - 2 and mc >= no + 4
            missing = pr is None or no is None
        met = "not measured" if missing else ("yes" if ok else "**no**")
        n = {m: len(g.get((task, setting, frac, m), [])) for m in v}
        fmt = {
            m: ("-" if x is None else f"{x:.1f}" + (f" ({n[m]} seed{'s' * (n[m] > 1)})" if n[m] < 3 else ""))
            for m, x in v.items()
        }
        lines.append(
            f"| {task} | {setting} | {100 * frac:g} % | {fmt['MCNC-oc']} | {fmt['MCNC-r0']} | {fmt['PRANC']} | "
            f"{fmt['NOLA']} | {target} | {met} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    g = group(results)
    panels = sorted({(k[0], k[1]) for k in g}, key=lambda p: (_task_order(p[0]), _setting_order(results, p[1])))
    methods = [m for m in METHODS if any(k[3] == m for k in g)]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}  # one colour per method in every panel
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows + 0.8), squeeze=False)
    handles: dict[str, object] = {}
    for ax, (task, setting) in zip(axes.flat, panels, strict=False):
        seen: list[float] = []
        for method in methods:
            pts = sorted(
                ((k[2] or 0.0), rs)
                for k, rs in g.items()
                if k[0] == task and k[1] == setting and k[3] == method and "na" not in rs[0]
            )
            if not pts:
                continue
            xs = [statistics.fmean(r["stored_bytes"] for r in rs) for _, rs in pts]
            ms = [mean_std([100 * r["acc"] for r in rs]) for _, rs in pts]
            seen += xs
            if method == "dense":
                handles[method] = ax.axhline(ms[0][0], color="k", ls="--", lw=1, label="dense float32")
                continue
            style = "s" if method.startswith("int") else "o-"
            handles[method] = ax.errorbar(
                xs, [m for m, _ in ms], yerr=[s for _, s in ms], fmt=style, capsize=3, color=colors[method]
            )
        ax.set_xscale("log")
        if seen and max(seen) < 3 * min(seen):  # one budget: leave room either side
            ax.set_xlim(min(seen) / 2, max(seen) * 2)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("stored bytes (weights + raw biases/BN)")
        ax.set_ylabel("test accuracy % (mean ± std over seeds)")
        ax.set_title(f"{task}, {setting}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 10), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    body = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Accuracy at matched stored size\n\n{body}\n"
    path.write_text(text)


def _block(loaded: list[dict]) -> tuple[str, str]:
    results = [r for d in loaded for r in d["results"]]
    for r in results:
        if "setting" not in r:
            r["setting"] = setting_of(r)
    table = format_table(results)
    runs = "\n".join(f"- `{d['command']}`: {d['info']}" for d in loaded)
    targets = targets_table(results)
    block = f"Runs:\n\n{runs}\n\nAgainst the targets (means of the reported seeds):\n\n{targets}\n\n{table}"
    return block, table


def report(loaded: list[dict], a: argparse.Namespace) -> None:
    block, table = _block(loaded)
    print(table)
    if a.out is not None:
        a.out.write_text(block + "\n")
    if a.doc is not None:
        write_doc(a.doc, block)
    if a.plot is not None:
        results = [r for d in loaded for r in d["results"]]
        for r in results:
            if "setting" not in r:
                r["setting"] = setting_of(r)
        plot(results, a.plot)


# ----------------------------------------------------------------------------- driver
def _lr_from(paths: list[Path]) -> dict[tuple[str, float | None, str], tuple[float, str]]:
    """Chosen learning rates (task, budget, method) -> (lr, the setting it was tuned in) from ``--json`` files."""
    out = {}
    for path in paths:
        for r in json.loads(path.read_text())["results"]:
            if r.get("phase") == "report" and "na" not in r and not r["method"].startswith("int"):
                out[(r["task"], r["frac"], r["method"])] = (r["lr"], r.get("setting") or setting_of(r))
    return out


def _save(path: Path | None, command: str, info: str, results: list[dict]) -> None:
    if path is None:
        return
    clean = [{k: v for k, v in r.items() if k != "model"} for r in results]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"command": command, "info": info, "results": clean}, indent=1))
    tmp.replace(path)


def _code_version() -> str:
    """The commit, and a digest of mcnc_core's sources (the working tree may differ from the commit)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        head = "?"
    h = hashlib.sha256()
    for f in sorted((root / "mcnc_core").glob("*.py")):
        h.update(f.read_bytes())
    return f"commit={head or '?'} mcnc_core sha256={h.hexdigest()[:12]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mnist1d MLP, 2 %%, seed 0, 60 steps (smoke test)")
    p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS))
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="fractions of the weights (default per task)")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="reported seeds (default 0 1 2; quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default per task: 800, 60k: 3000)")
    p.add_argument("--seconds", type=float, default=None, help="equal wall-clock: training seconds per run")
    p.add_argument("--lr-from", type=Path, nargs="+", default=None, help="reuse the lrs chosen in these --json files")
    p.add_argument("--tune-budget", type=float, default=None, help="tune at this budget only, reuse its lr")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="every run's numbers (saved after each run)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in --json, do the rest")
    p.add_argument("--out", type=Path, default=None, help="write the markdown block here")
    p.add_argument("--doc", type=Path, default=None, help="replace the generated block in this markdown file")
    p.add_argument("--plot", type=Path, default=None, help="write the accuracy-vs-bytes PNG here")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="report from these --json files; run nothing")
    a = p.parse_args(argv)
    if a.merge:
        report([json.loads(path.read_text()) for path in a.merge], a)
        return 0
    torch.set_num_threads(a.threads)
    tasks = a.tasks or (["mnist1d-mlp"] if a.quick else list(TASKS)[:3])
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    methods = a.methods or METHODS
    grids = dict(LR_GRID)
    chosen_before = _lr_from(a.lr_from) if a.lr_from else {}
    command = " ".join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    gen = mcnc_core.MCNCConfig()
    info = (
        f"code: {_code_version()} "
        f"batch=128 reported seeds={seeds} tune seed={TUNE_SEED} data_seed={DATA_SEED} split_seed={SPLIT_SEED} "
        f"grids={json.dumps({m: grids[m] for m in TRAINED if m in methods})} "
        f"mcnc: k={gen.k} width={gen.width} depth={gen.depth} L={gen.bound:g}"
        f"{f' generator v{gen.generator_version}' if hasattr(gen, 'generator_version') else ''} "
        f"param_groups={'mcnc_core.param_groups' if HAS_PARAM_GROUPS else f'fallback (codes lr, raw {RAW_LR})'}; "
        f"baselines raw lr={RAW_LR}; nola rank={NOLA_RANK}; threads={a.threads} torch={torch.__version__} "
        f"python={platform.python_version()} cpu={platform.machine()} nproc={os.cpu_count()}"
    )
    results: list[dict] = []
    if a.resume and a.json is not None and a.json.exists():
        results = json.loads(a.json.read_text())["results"]
    done = {_rkey(r) for r in results}
    t_start = time.perf_counter()

    def run(task: str, method: str, frac: float | None, seed: int, lr: float, phase: str, steps: int | None) -> dict:
        key = (task, method, frac, seed, lr, phase)
        if key in done and not (method == "dense" and phase == "report"):  # dense again: its model makes int8/4
            return next(r for r in results if _rkey(r) == key)
        r = run_one(
            task, method, frac, seed, lr, steps=steps, seconds=a.seconds, on="val" if phase == "tune" else "test"
        )
        r["phase"] = phase
        r["setting"] = f"{a.seconds:g} s" if a.seconds is not None else f"{steps} steps"
        if phase == "tune":
            r["tuned_for"] = r["setting"]
        if key in done:  # a dense run redone to get its model for int8/int4: replace the stored one
            results[:] = [q for q in results if _rkey(q) != key]
        results.append(r)
        done.add(key)
        msg = r.get("na") or (
            f"{on_name(phase)} {100 * r['acc']:.1f}  loss {r['train_loss']:.3f}  {r['steps']} steps {r['seconds']:.1f}s"
        )
        budget = "-" if frac is None else f"{100 * frac:g}%"
        print(f"{task:>12} {method:>9} {budget:>4} seed {seed:>3} lr {lr:<6g} {phase}: {msg}", flush=True)
        _save(a.json, command, info, results)
        return r

    for task in tasks:
        t = TASKS[task]
        steps = a.steps or (60 if a.quick else t.steps)
        if a.seconds is not None:
            steps = None
        budgets = a.budgets or ([0.02] if a.quick else list(t.budgets))
        task_data(task)
        for method in [m for m in TRAINED if m in methods or (m == "dense" and {"int8", "int4"} & set(methods))]:
            cells: list[float | None] = [None] if method == "dense" else list(budgets)
            if a.tune_budget in cells:  # tune there first; the other budgets reuse its lr
                cells.remove(a.tune_budget)
                cells.insert(0, a.tune_budget)
            lr_of: dict[float | None, float] = {}
            lr_source: dict[tuple[str, float | None], str] = {}
            for frac in cells:
                if (task, frac, method) in chosen_before:
                    lr_of[frac], lr_source[(method, frac)] = chosen_before[(task, frac, method)]
                    continue
                if a.tune_budget is not None and lr_of:
                    continue
                tune = [run(task, method, frac, TUNE_SEED, lr, "tune", steps) for lr in grids[method]]
                ok = [r for r in tune if "na" not in r]
                if ok:
                    lr_of[frac] = max(ok, key=lambda r: r["acc"])["lr"]
            for frac in cells:
                lr = lr_of.get(frac, next(iter(lr_of.values()), grids[method][len(grids[method]) // 2]))
                for seed in seeds:
                    r = run(task, method, frac, seed, lr, "report", steps)
                    if (method, frac) in lr_source:
                        r["lr_tuned_at"] = lr_source[(method, frac)]
                        _save(a.json, command, info, results)
                    if method == "dense":
                        for bits in (8, 4):
                            if f"int{bits}" in methods and "model" in r:
                                q = quantized(r, bits)
                                q.update(phase="report", setting=r["setting"])
                                results[:] = [
                                    x
                                    for x in results
                                    if not (
                                        x["task"] == task
                                        and x["method"] == q["method"]
                                        and x["seed"] == seed
                                        and x.get("phase") == "report"
                                        and x["setting"] == q["setting"]
                                    )
                                ]
                                results.append(q)
                        _save(a.json, command, info, results)
    for r in results:
        for k in ("acc", "stored_bytes", "seconds"):
            if k in r and not math.isfinite(r[k]):
                raise SystemExit(f"non-finite result: {r}")
    info += f" total={time.perf_counter() - t_start:.0f}s"
    _save(a.json, command, info, results)
    clean = [{k: v for k, v in r.items() if k != "model"} for r in results]
    report([{"command": command, "info": info, "results": clean}], a)
    return 0


def _rkey(r: dict) -> tuple:
    return (r["task"], r["method"], r["frac"], r["seed"], r["lr"], r["phase"])


def on_name(phase: str) -> str:
    return "val" if phase == "tune" else "test"


if __name__ == "__main__":
    raise SystemExit(main())
