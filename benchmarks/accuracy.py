"""Accuracy at matched stored size: MCNC vs PRANC, NOLA, low rank, pruning and quantization.

Three tasks that need no download, each trained from scratch:

* ``mnist1d-mlp``: mnist1d (generated locally, ``args.seed = 42``, 4000 train / 1000 test),
  MLP 40-128-128-10 (22,784 weights);
* ``mnist1d-cnn``: same data, 1-D CNN: 3 Conv1d(k=5, 32 channels, strides 1-2-2) + Linear(320, 10)
  (13,600 weights);
* ``digits-cnn``: scikit-learn's 8x8 digits (1437 train / 360 test, fixed split), 2-D CNN:
  Conv2d(1,16,3) Conv2d(16,32,3) MaxPool Linear(512,32) Linear(32,10) (21,472 weights).

The *weights* of every Linear/Conv layer are what each method compresses; biases stay raw
float32 for every method alike. A budget of ``f`` means ``round(f * weights)`` stored numbers
for the weights (float32 each, so the same stored bytes): MCNC codes and scales (``k = 8``,
``chunk_size`` the smallest that fits, ``min_numel = 1``; with and without the low-rank step),
PRANC coefficients, NOLA coefficients, low-rank factors (where rank 1 fits); magnitude pruning
gets the same bytes counting 32-bit values plus index bits; 8/4-bit post-training quantization
sits at its own size. Every method trains through one loop (``benchmarks/baselines/common.py``:
Adam, cosine decay to 0, minibatch 128, final-step test accuracy).

Usage::

    python benchmarks/accuracy.py                                    # full grid (see docs/benchmarks.md)
    python benchmarks/accuracy.py --doc docs/benchmarks.md --plot docs/accuracy.png --json /tmp/acc.json
    python benchmarks/accuracy.py --quick                            # mnist1d MLP, 2 %, 1 seed, 60 steps
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core
from benchmarks.baselines import NOLA, PRANC, LowRank, MagnitudePruned, quantize_model, target_weights, train
from benchmarks.baselines.common import fan_in
from benchmarks.baselines.lora import lowrank_numbers
from benchmarks.baselines.pruning import pruning_bits_per_weight

DATA_SEED = 42
MCNC_K = 8
MCNC_RANK = 8
MCNC_BOUND = 10.0
MCNC_WIDTH = 64
NOLA_RANK = 8
DEFAULT_LR = {
    "dense": 3e-3,
    "MCNC": 0.05,
    f"MCNC r={MCNC_RANK}": 0.1,
    "PRANC": 0.1,
    "NOLA": 1e-2,
    "low rank": 3e-3,
    "pruning": 3e-3,
}
TRAINED = list(DEFAULT_LR)
METHODS = [*TRAINED, "int8", "int4"]
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

Data = tuple[Tensor, Tensor, Tensor, Tensor]


# ----------------------------------------------------------------------------- tasks
def load_mnist1d() -> Data:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = DATA_SEED
    args.num_samples = 5000
    d = make_dataset(args)
    f = torch.float32
    return (
        torch.tensor(d["x"], dtype=f),
        torch.tensor(d["y"]).long(),
        torch.tensor(d["x_test"], dtype=f),
        torch.tensor(d["y_test"]).long(),
    )


def load_digits() -> Data:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target).long()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(DATA_SEED))
    tr, te = perm[:1437], perm[1437:]
    return x[tr], y[tr], x[te], y[te]


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


TASKS: dict[str, tuple[Callable[[], Data], Callable[[], nn.Module]]] = {
    "mnist1d-mlp": (load_mnist1d, make_mlp),
    "mnist1d-cnn": (load_mnist1d, make_cnn1d),
    "digits-cnn": (load_digits, make_cnn2d),
}


# ----------------------------------------------------------------------------- budgets
def mcnc_numbers(shapes: list[tuple[int, ...]], chunk: int, rank: int, k: int | None = None) -> int:
    """Codes + scales ``compress`` creates (mirrors its rule: rank only where ``rank < min(rows, cols)``)."""
    k = MCNC_K if k is None else k
    total = 0
    for s in shapes:
        r = rank if rank < min(s[0], fan_in(s)) else 0
        for f in mcnc_core.manifest.factor_shapes(s, r):
            total += -(-math.prod(f) // chunk) * (k + 1)
    return total


def mcnc_chunk(shapes: list[tuple[int, ...]], budget: int, rank: int) -> int | None:
    """Smallest chunk size whose stored numbers fit ``budget`` (None if even one chunk per factor does not)."""
    biggest = max(math.prod(s) for s in shapes)
    if mcnc_numbers(shapes, biggest, rank) > budget:
        return None
    lo, hi = 2, biggest
    while lo < hi:
        mid = (lo + hi) // 2
        if mcnc_numbers(shapes, mid, rank) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ----------------------------------------------------------------------------- one run
def run_one(task: str, method: str, frac: float, seed: int, data: Data, steps: int, lr: dict[str, float]) -> dict:
    """Train ``method`` at budget ``frac`` with ``seed``; returns accuracy and stored sizes (or ``na``)."""
    make = TASKS[task][1]
    torch.manual_seed(seed)
    net = make()
    shapes = [tuple(p.shape) for p in target_weights(net).values()]
    n_weights = sum(math.prod(s) for s in shapes)
    n_bias = sum(p.numel() for p in net.parameters()) - n_weights
    budget = round(frac * n_weights)
    out: dict = {"task": task, "method": method, "frac": frac, "seed": seed, "budget": budget}
    t0 = time.perf_counter()
    numbers: int
    weight_bytes: int
    if method == "dense":
        acc = train(net, data, lr=lr[method], steps=steps, seed=seed)
        numbers, weight_bytes = n_weights, 4 * n_weights
    elif method.startswith("MCNC"):
        rank = MCNC_RANK if "r=" in method else 0
        chunk = mcnc_chunk(shapes, budget, rank)
        if chunk is None:
            return {**out, "na": "one chunk per tensor exceeds the budget"}
        cfg = mcnc_core.MCNCConfig(
            k=MCNC_K, chunk_size=chunk, rank=rank, seed=seed, min_numel=1, bound=MCNC_BOUND, width=MCNC_WIDTH
        )
        mcnc_core.compress(net, cfg)
        acc = train(net, data, lr=lr[method], steps=steps, seed=seed)
        bundle = mcnc_core.export_bundle(net)
        numbers = bundle.alpha.numel() + bundle.beta.numel()
        assert numbers == mcnc_numbers(shapes, chunk, rank), (numbers, chunk)
        weight_bytes = 4 * numbers
        out.update(bundle_bytes=len(bundle.to_bytes()), detail=f"d={chunk}")
    elif method == "PRANC":
        model = PRANC(net, budget, seed)
        acc = train(model, data, lr=lr[method], steps=steps, seed=seed)
        numbers = model.stored_numbers()
        weight_bytes = 4 * numbers + 8  # + the 64-bit seed
    elif method == "NOLA":
        model = NOLA(net, budget, seed, rank=NOLA_RANK)
        acc = train(model, data, lr=lr[method], steps=steps, seed=seed)
        numbers = model.stored_numbers()
        weight_bytes = 4 * numbers + 8
        out["detail"] = f"r={NOLA_RANK}"
    elif method == "low rank":
        rank = 0
        while lowrank_numbers(shapes, rank + 1) <= budget and rank < max(min(s[0], fan_in(s)) for s in shapes):
            rank += 1
        if rank == 0:
            return {**out, "na": f"rank 1 needs {lowrank_numbers(shapes, 1)} numbers"}
        model = LowRank(net, rank, seed)
        acc = train(model, data, lr=lr[method], steps=steps, seed=seed)
        numbers = model.stored_numbers()
        weight_bytes = 4 * numbers
        out["detail"] = f"r={rank}"
    elif method == "pruning":
        bits = pruning_bits_per_weight(shapes)
        keep = (budget * 32) // bits
        model = MagnitudePruned(net)
        half = steps // 2
        train(model, data, lr=lr[method], steps=half, seed=seed)
        model.prune(keep)
        acc = train(model, data, lr=lr[method], steps=steps - half, seed=seed + 10_000)
        numbers = model.stored_numbers()
        weight_bytes = (numbers * bits + 7) // 8
        out["detail"] = f"{keep} kept x {bits} bits"
    else:
        raise ValueError(method)
    out.update(
        acc=acc,
        numbers=numbers,
        stored_bytes=weight_bytes + 4 * n_bias,
        dense_bytes=4 * (n_weights + n_bias),
        seconds=time.perf_counter() - t0,
        net=net if method == "dense" else None,
    )
    return out


def quantized(dense_run: dict, bits: int, data: Data) -> dict:
    from benchmarks.baselines import accuracy

    qnet, qbytes = quantize_model(dense_run["net"], bits)
    n_bias = dense_run["dense_bytes"] // 4 - dense_run["numbers"]
    return {
        **{k: dense_run[k] for k in ("task", "seed", "dense_bytes")},
        "method": f"int{bits}",
        "frac": bits / 32,
        "budget": None,
        "acc": accuracy(qnet, data[2], data[3]),
        "numbers": dense_run["numbers"],
        "stored_bytes": qbytes + 4 * n_bias,
        "seconds": 0.0,
        "detail": "post-training, per-tensor",
        "net": None,
    }


# ----------------------------------------------------------------------------- reporting
def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def group(results: list[dict]) -> dict[tuple[str, float, str], list[dict]]:
    out: dict[tuple[str, float, str], list[dict]] = {}
    for r in results:
        out.setdefault((r["task"], r["frac"], r["method"]), []).append(r)
    return out


def format_table(results: list[dict], budgets: list[float]) -> str:
    g = group(results)
    lines = [
        "| task | budget | method | stored numbers (weights) | stored bytes | % of dense bytes | test acc % |"
        " notes | s/run |",
        "|---|---|---|---:|---:|---:|---|---|---:|",
    ]
    tasks = list(dict.fromkeys(r["task"] for r in results))
    for task in tasks:
        trained = _method_order(results)
        keys = [("dense", None)] + [(m, f) for f in budgets for m in trained] + [("int8", None), ("int4", None)]
        for method, frac in keys:
            rs = g.get((task, frac if frac is not None else _frac_of(method), method))
            if not rs:
                continue
            label = "-" if frac is None else f"{100 * frac:g} %"
            if "na" in rs[0]:
                lines.append(f"| {task} | {label} | {method} | - | - | - | n/a | {rs[0]['na']} | |")
                continue
            m, sd = mean_std([100 * r["acc"] for r in rs])
            r0 = rs[0]
            note = r0.get("detail", "")
            if "bundle_bytes" in r0:
                note += f"; bundle file {r0['bundle_bytes']} B"
            flag = ""
            if method.startswith("MCNC") and frac is not None:
                flag = _compare(g, task, frac, method, m)
            lines.append(
                f"| {task} | {label} | {method} | {r0['numbers']} | {r0['stored_bytes']} | "
                f"{100 * r0['stored_bytes'] / r0['dense_bytes']:.1f} | {m:.1f} ± {sd:.1f}{flag} | {note} | "
                f"{statistics.fmean(r['seconds'] for r in rs):.1f} |"
            )
    return "\n".join(lines)


def _frac_of(method: str) -> float | None:
    return {"int8": 0.25, "int4": 0.125}.get(method)


def _method_order(results: list[dict]) -> list[str]:
    """Budgeted methods in the order of ``TRAINED``, each followed by its variants (``--suffix`` runs)."""
    names = list(dict.fromkeys(r["method"] for r in results if r["method"] not in ("dense", "int8", "int4")))
    base = [m for m in TRAINED[1:] if m in names]
    out = []
    for b in base:
        out += [b] + [n for n in names if n != b and n.startswith(b + " (")]
    return out + [n for n in names if n not in out]


def _compare(g: dict, task: str, frac: float, method: str, m: float) -> str:
    """Flag an MCNC mean below the best variant (any lr) of PRANC or of NOLA at the same budget."""
    worse = []
    for other in ("PRANC", "NOLA"):
        best = [
            statistics.fmean(100 * r["acc"] for r in rs)
            for (t, f, name), rs in g.items()
            if t == task and f == frac and (name == other or name.startswith(other + " (")) and "na" not in rs[0]
        ]
        if best and max(best) > m:
            worse.append(other)
    return f" **(< {', '.join(worse)})**" if worse else ""


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    g = group(results)
    tasks = list(dict.fromkeys(r["task"] for r in results))
    methods = ["dense", *_method_order(results), "int8", "int4"]
    colors = {m: f"C{i}" for i, m in enumerate(methods)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4.4), squeeze=False)
    handles: dict[str, object] = {}
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in methods:
            pts = sorted((k[1], rs) for k, rs in g.items() if k[0] == task and k[2] == method and "na" not in rs[0])
            if not pts:
                continue
            xs = [statistics.fmean(r["stored_bytes"] for r in rs) for _, rs in pts]
            ms = [mean_std([100 * r["acc"] for r in rs]) for _, rs in pts]
            if method == "dense":
                handles[method] = ax.axhline(ms[0][0], color="k", ls="--", lw=1, label="dense float32")
                continue
            style = "s" if method.startswith("int") else "o-"
            handles[method] = ax.errorbar(
                xs, [m for m, _ in ms], yerr=[s for _, s in ms], fmt=style, capsize=3, color=colors[method]
            )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(0, 100)
        ax.set_xlabel("stored bytes (weights + raw biases)")
        ax.set_ylabel("test accuracy % (mean ± std, 3 seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 10), fontsize=8)
    fig.subplots_adjust(bottom=0.25)
    fig.savefig(path, dpi=110)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    body = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Accuracy at matched stored size\n\n{body}\n"
    path.write_text(text)


def report_merged(a: argparse.Namespace) -> int:
    """Table, doc block and plot from several ``--json`` files (e.g. one process per task)."""
    loaded = [json.loads(path.read_text()) for path in a.merge]
    results = [r for d in loaded for r in d["results"]]
    budgets = sorted({r["frac"] for r in results if r["method"].startswith("MCNC")})
    table = format_table(results, budgets)
    runs = "\n".join(f"- `{d['command']}`: {d['info']}" for d in loaded)
    block = f"Runs (merged with `--merge`):\n\n{runs}\n\n{table}"
    print(table)
    if a.out is not None:
        a.out.write_text(block + "\n")
    if a.doc is not None:
        write_doc(a.doc, block)
    if a.plot is not None:
        plot(results, a.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="mnist1d MLP, 2 %% budget, seed 0, 60 steps (smoke test)")
    p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS))
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="fractions of the weights (0.01 0.02 0.05)")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps per run (default 800; quick: 60)")
    p.add_argument("--lr", nargs="*", default=[], metavar="METHOD=LR", help="override a method's learning rate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="save every run's numbers here")
    p.add_argument("--out", type=Path, default=None, help="write the markdown block here")
    p.add_argument("--doc", type=Path, default=None, help="replace the generated block in this markdown file")
    p.add_argument("--plot", type=Path, default=None, help="write the accuracy-vs-bytes PNG here")
    p.add_argument("--suffix", default="", help="appended to method names (a variant, e.g. ' (lr 0.03)')")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="report from these --json files; run nothing")
    a = p.parse_args(argv)
    if a.merge:
        return report_merged(a)
    torch.set_num_threads(a.threads)
    tasks = a.tasks or (["mnist1d-mlp"] if a.quick else list(TASKS))
    budgets = a.budgets or ([0.02] if a.quick else [0.01, 0.02, 0.05])
    seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
    steps = a.steps or (60 if a.quick else 800)
    methods = a.methods or METHODS
    lr = dict(DEFAULT_LR)
    for item in a.lr:
        name, _, value = item.rpartition("=")
        lr[name] = float(value)

    t_start = time.perf_counter()
    results: list[dict] = []
    for task in tasks:
        data = TASKS[task][0]()
        for seed in seeds:
            if {"dense", "int8", "int4"} & set(methods):
                dense = run_one(task, "dense", 1.0, seed, data, steps, lr)
                dense["frac"] = None
                results.append(dense)
                msg = f"acc {100 * dense['acc']:.1f}  {dense['seconds']:.1f}s"
                print(f"{task:>12}  dense seed {seed}: {msg}", flush=True)
                results += [quantized(dense, b, data) for b in (8, 4) if f"int{b}" in methods]
            for frac in budgets:
                for method in TRAINED[1:]:
                    if method not in methods:
                        continue
                    r = run_one(task, method, frac, seed, data, steps, lr)
                    r["method"] += a.suffix
                    results.append(r)
                    msg = r.get("na") or f"acc {100 * r['acc']:.1f}  bytes {r['stored_bytes']}  {r['seconds']:.1f}s"
                    print(f"{task:>12} {100 * frac:>4g}% seed {seed} {method:>9}: {msg}", flush=True)
    for r in results:
        r.pop("net", None)
        for key in ("acc", "stored_bytes", "seconds"):
            if key in r and not math.isfinite(r[key]):
                raise SystemExit(f"non-finite result: {r}")
    total = time.perf_counter() - t_start
    table = format_table(results, budgets)
    command = " ".join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    info = (
        f"steps={steps} batch=128 seeds={seeds} data_seed={DATA_SEED} lr={json.dumps(lr)} "
        f"mcnc: k={MCNC_K} width={MCNC_WIDTH} depth=2 L={MCNC_BOUND:g} rank={MCNC_RANK} (low-rank variant); "
        f"nola rank={NOLA_RANK}; "
        f"threads={a.threads} torch={torch.__version__} python={platform.python_version()} "
        f"cpu={platform.machine()} total={total:.0f}s"
    )
    print()
    print(table)
    print(info)
    block = f"Command: `{command}`\n\n{info}\n\n{table}"
    if a.out is not None:
        a.out.write_text(block + "\n")
    if a.doc is not None:
        write_doc(a.doc, block)
    if a.plot is not None:
        plot(results, a.plot)
    if a.json is not None:
        a.json.write_text(json.dumps({"command": command, "info": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
