"""How the best code learning rate moves with the training horizon: the evidence for ``param_groups(total_steps=…)``.

For each task, horizon ``T`` (Adam steps, cosine decay to 0 over exactly ``T``) and code
learning rate on a grid (powers of 3 times ``RECOMMENDED_LR[mode][0]``; scales and raw
parameters keep ``param_groups``' ratio), one run trains with a tuning seed and is scored on the
VALIDATION split. One JSON line per run goes to ``--out`` (appended; runs already there are
skipped, so a killed sweep resumes). ``--report`` reads the lines back, picks the best lr per
(task, horizon) on validation, fits ``lr*(T) = lr_800 * (T / 800) ** -p`` per mode (one slope
per mode pooled over its tasks, one intercept per task) and, for runs scored on TEST (``--eval
test``, fresh seeds, the lrs the rule and the constant recipe give), prints the held-out
comparison with paired differences. Test runs never enter a choice.

Tasks (all generated locally, no download; data and splits are ``benchmarks/accuracy.py``'s:
mnist1d, 3400 train / 600 validation / 1000 test):

* ``mlp-full`` / ``cnn-full``: ``accuracy.py``'s ``mnist1d-mlp`` / ``mnist1d-cnn`` cell, method
  ``MCNC-oc`` (over-complete factors) at 2 % of the weights, run through ``accuracy.run_one``.
* ``mlp-delta`` / ``cnn-delta``: fine-tuning. The same model, trained dense (Adam 3e-3, 1500
  steps, seed 0) on the training samples of classes 0-4 only, is the frozen base; delta mode
  (rank-8 factors on every Linear/Conv weight, k=8, chunk 128, biases trainable) learns all 10
  classes. A seed drives the codes' init, the generator and the batch order; the base is fixed.

Usage::

    python benchmarks/horizon.py --worker 0/2 & python benchmarks/horizon.py --worker 1/2   # the sweep
    python benchmarks/horizon.py --eval test --seeds 31 32 33 --horizons 12000 --rule   # held-out check
    python benchmarks/horizon.py --report                                                 # tables + fit
    python benchmarks/horizon.py --quick                                                  # smoke (~10 s)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core
from benchmarks import accuracy as acc_bench
from benchmarks.baselines.common import accuracy, fit
from mcnc_core.recipe import RECOMMENDED_LR

OUT = Path(__file__).resolve().parents[1] / "docs" / "horizon-runs" / "runs.jsonl"
HORIZONS = (800, 3000, 12000)
GRID = (-2, -1, 0, 1)  # code lr = RECOMMENDED_LR[mode][0] * 3 ** j
TUNE_SEEDS = (100,)
BUDGET = 0.02  # full mode: stored numbers / weights
BASE_CLASSES = 5  # delta mode: the base saw classes 0 .. BASE_CLASSES - 1
TASKS = {
    "mlp-full": ("full", "mnist1d-mlp"),
    "cnn-full": ("full", "mnist1d-cnn"),
    "mlp-delta": ("delta", "mnist1d-mlp"),
    "cnn-delta": ("delta", "mnist1d-cnn"),
}
_BASES: dict[str, nn.Module] = {}


def lr_key(lr: float) -> float:
    """``lr`` to 3 significant digits: how every lr is written in run lines (and matched on resume)."""
    return float(f"{lr:.3g}")


def grid_lr(mode: str, j: int) -> float:
    return lr_key(RECOMMENDED_LR[mode][0] * 3.0**j)


def _base(data_task: str) -> nn.Module:
    """The delta tasks' frozen base: dense, trained on classes 0-4 of the training split (cached)."""
    if data_task not in _BASES:
        x, y, *_ = acc_bench.task_data(data_task)
        keep = y < BASE_CLASSES
        torch.manual_seed(0)
        net = acc_bench.TASKS[data_task].make()
        fit(net, x[keep], y[keep], lr=3e-3, steps=1500, seed=0)
        _BASES[data_task] = net
    return _BASES[data_task]


def run_delta(data_task: str, seed: int, lr: float, steps: int, on: str) -> dict:
    x, y, xv, yv, xt, yt = acc_bench.task_data(data_task)
    model = copy.deepcopy(_base(data_task))
    base_acc = accuracy(model, *((xv, yv) if on == "val" else (xt, yt)))
    cfg = mcnc_core.MCNCConfig(
        mode="delta", rank=8, k=8, chunk_size=128, seed=seed, init_seed=seed, min_numel=1, trainable=("*.bias",)
    )
    mcnc_core.compress(model, cfg)
    tr = fit(model, x, y, lr=lr, steps=steps, seed=seed, params=mcnc_core.param_groups(model, lr=lr))
    bundle = mcnc_core.export_bundle(model)
    return {
        "acc": accuracy(model, *((xv, yv) if on == "val" else (xt, yt))),
        "base_acc": base_acc,
        "train_loss": tr["train_loss"],
        "seconds": tr["seconds"],
        "numbers": bundle.alpha.numel() + bundle.beta.numel(),
    }


def run(task: str, seed: int, lr: float, steps: int, on: str) -> dict:
    """One training run of ``task``; the result line (without timestamps)."""
    mode, data_task = TASKS[task]
    out = {"task": task, "mode": mode, "horizon": steps, "lr": lr, "seed": seed, "eval": on}
    if mode == "full":
        r = acc_bench.run_one(data_task, "MCNC-oc", BUDGET, seed, lr, steps=steps, seconds=None, on=on)
        keys = ("acc", "train_loss", "seconds", "numbers")
        return {**out, **{k: r[k] for k in keys}}
    return {**out, **run_delta(data_task, seed, lr, steps, on)}


def _key(r: dict) -> tuple:
    return (r["task"], r["horizon"], float(r["lr"]), r["seed"], r["eval"])


def claim(claims: Path, key: tuple) -> bool:
    """Claim one job for this process (False: done already, or claimed by a live worker).

    Workers started at any time share one queue: a claim is a line ``[pid, key]`` in ``claims``,
    appended under an exclusive lock; a dead worker's claims lapse, so a killed sweep resumes.
    """
    with claims.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        for line in f.read().splitlines():
            pid, other = json.loads(line)
            if tuple(other) == list_key(key) and _alive(pid):
                return False
        f.write(json.dumps([os.getpid(), list_key(key)]) + "\n")
        return True


def list_key(key: tuple) -> tuple:
    return tuple(json.loads(json.dumps(list(key))))


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        return True
    return False


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- analysis
def best_lr(points: dict[float, float]) -> tuple[float, float]:
    """(grid argmax, refined optimum): a parabola in log lr through the argmax and its neighbours,
    clipped to the neighbours' range; the argmax itself at an edge of the grid."""
    lrs = sorted(points)
    i = max(range(len(lrs)), key=lambda j: points[lrs[j]])
    if i in (0, len(lrs) - 1):
        return lrs[i], lrs[i]
    xs = [math.log(lrs[j]) for j in (i - 1, i, i + 1)]
    ys = [points[lrs[j]] for j in (i - 1, i, i + 1)]
    # vertex of the parabola through three points (equal spacing h in log lr)
    h = xs[1] - xs[0]
    denom = ys[0] - 2 * ys[1] + ys[2]
    shift = 0.0 if denom == 0 else 0.5 * h * (ys[0] - ys[2]) / denom
    return lrs[i], math.exp(min(max(xs[1] + shift, xs[0]), xs[2]))


def fit_slope(optima: list[tuple[str, int, float]]) -> float | None:
    """Least squares of log lr* on log(T/800) with one intercept per task: the shared slope (= -p)."""
    by_task: dict[str, list[tuple[float, float]]] = {}
    for task, t, lr in optima:
        by_task.setdefault(task, []).append((math.log(t / 800), math.log(lr)))
    num = den = 0.0
    for pts in by_task.values():
        mx = statistics.fmean(p[0] for p in pts)
        my = statistics.fmean(p[1] for p in pts)
        num += sum((px - mx) * (py - my) for px, py in pts)
        den += sum((px - mx) ** 2 for px, _ in pts)
    return None if den == 0 else num / den


def mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.1f} ± {sd:.1f}"


def report(rows: list[dict]) -> str:
    val = [r for r in rows if r["eval"] == "val"]
    lines = ["## Validation: accuracy % per code lr (mean over tuning seeds)", ""]
    optima: dict[str, list[tuple[str, int, float]]] = {}
    for task in TASKS:
        mode = TASKS[task][0]
        cells = [r for r in val if r["task"] == task]
        if not cells:
            continue
        lrs = sorted({float(r["lr"]) for r in cells})
        lines += [f"### {task} ({mode} mode)", ""]
        lines.append("| steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best (grid) | refined |")
        lines.append("|---" * (len(lrs) + 3) + "|")
        for t in sorted({r["horizon"] for r in cells}):
            pts = {}
            row = [str(t)]
            for lr in lrs:
                accs = [100 * r["acc"] for r in cells if r["horizon"] == t and float(r["lr"]) == lr]
                if accs:
                    pts[lr] = statistics.fmean(accs)
                row.append(f"{pts[lr]:.1f} (n={len(accs)})" if accs else "—")
            grid_best, refined = best_lr(pts)
            optima.setdefault(mode, []).append((task, t, refined))
            lines.append("| " + " | ".join([*row, f"**{grid_best:g}**", f"{refined:.3g}"]) + " |")
        lines.append("")
    lines += ["## Fit: log lr* = log lr_800(task) - p log(T / 800), refined optima, per mode", ""]
    for mode, opt in optima.items():
        slope = fit_slope(opt)
        lines.append(f"- {mode}: p = {-slope:.3f} over {len(opt)} optima" if slope is not None else f"- {mode}: —")
    test = [r for r in rows if r["eval"] == "test"]
    if test:
        lines += ["", "## Held-out (TEST, fresh seeds): code lr → accuracy %", ""]
        lines.append("| task | steps | lr | seeds | test acc % | paired diff vs the first lr |")
        lines.append("|---|---|---|---|---|---|")
        for task in TASKS:
            for t in sorted({r["horizon"] for r in test if r["task"] == task}):
                cells = [r for r in test if r["task"] == task and r["horizon"] == t]
                lrs = sorted({float(r["lr"]) for r in cells}, key=lambda v: -v)
                ref = {r["seed"]: r["acc"] for r in cells if float(r["lr"]) == lrs[0]}
                for lr in lrs:
                    by_seed = {r["seed"]: r["acc"] for r in cells if float(r["lr"]) == lr}
                    seeds = sorted(by_seed)
                    diff = [100 * (by_seed[s] - ref[s]) for s in seeds if s in ref]
                    accs = [100 * by_seed[s] for s in seeds]
                    d = "—" if lr == lrs[0] else mean_std(diff)
                    lines.append(f"| {task} | {t} | {lr:g} | {','.join(map(str, seeds))} | {mean_std(accs)} | {d} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    p.add_argument("--grid", type=int, nargs="+", default=list(GRID), help="code lr = RECOMMENDED_LR * 3**j")
    p.add_argument("--lrs", type=float, nargs="+", default=None, help="explicit code lrs (instead of --grid)")
    p.add_argument("--rule", action="store_true", help="lrs: the constant recipe and param_groups(total_steps=T)'s")
    p.add_argument("--seeds", type=int, nargs="+", default=list(TUNE_SEEDS))
    p.add_argument("--eval", choices=("val", "test"), default="val")
    p.add_argument("--worker", default="0/1", help="i/n: run every n-th job starting at i (parallel sweeps)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--claims", type=Path, default=Path("/tmp/mcnc-horizon-claims.jsonl"), help="shared job queue")
    p.add_argument("--report", action="store_true", help="print the tables and the fit from --out; train nothing")
    p.add_argument("--quick", action="store_true", help="smoke: mlp-full and mlp-delta, 30 steps, one lr")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.report:
        print(report(read(a.out)))
        return 0
    if a.quick:
        a.tasks, a.horizons, a.grid = ["mlp-full", "mlp-delta"], [30], [0]
    idx, n = (int(v) for v in a.worker.split("/"))
    done = {_key(r) for r in read(a.out)}
    jobs = []
    for t in sorted(a.horizons, reverse=True):  # longest first: the slowest jobs spread over workers
        for task in a.tasks:
            mode = TASKS[task][0]
            if a.rule:
                lrs = sorted({RECOMMENDED_LR[mode][0], rule_lr(task, t)})
            else:
                lrs = a.lrs if a.lrs is not None else [grid_lr(mode, j) for j in a.grid]
            jobs += [(task, t, float(lr), s) for lr in lrs for s in a.seeds]
    jobs = [j for i, j in enumerate(jobs) if i % n == idx and (j[0], j[1], j[2], j[3], a.eval) not in done]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{len(jobs)} runs to do", flush=True)
    for task, t, lr, seed in jobs:
        key = (task, t, lr, seed, a.eval)
        if key in {_key(r) for r in read(a.out)} or not claim(a.claims, key):
            continue  # another worker did it or is doing it
        t0 = time.perf_counter()
        r = run(task, seed, lr, t, a.eval)
        if not math.isfinite(r["acc"]):
            raise SystemExit(f"non-finite accuracy: {r}")
        r["wall_s"] = round(time.perf_counter() - t0, 1)
        r["torch"] = torch.__version__
        with a.out.open("a") as f:  # one short line per append: two workers can share the file
            f.write(json.dumps(r) + "\n")
        print(f"{task} T={t} lr={lr:g} seed={seed} {a.eval} acc={100 * r['acc']:.1f} ({r['wall_s']}s)", flush=True)
    return 0


def rule_lr(task: str, steps: int) -> float:
    """The code lr ``param_groups(model, total_steps=steps)`` gives this task's mode."""
    mode = TASKS[task][0]
    return lr_key(mcnc_core.recipe.code_lr(mode, steps))


if __name__ == "__main__":
    raise SystemExit(main())
