"""MCNC-LoRA adapters on MiniLM-L6: accuracy at matched stored numbers, training cost, adapter bytes.

VADER word polarity has only ~4 points between the frozen encoder and LoRA r=16, too little to
separate adapters; the benchmark with head-room (BShift, 15 points, with VB-LoRA, FourierFT,
TinyLoRA and the ``convert_peft`` table) is ``benchmarks/adapter_headroom.py``.

Three parts (issue 10, item 5), each a sub-command:

``accuracy``
    all-MiniLM-L6-v2 + mean pooling + a new linear head (``examples/minilm_delta.py``'s model, data
    and training loop, imported) on VADER word polarity. Per budget of stored numbers:

    * ``mcnc``  - MCNC on rank-16 LoRA factors of all 36 encoder Linear matrices (delta mode, adapter
      cost: ``base(x) + x Bᵀ Aᵀ``), ``k``/``chunk_size`` chosen to hit the budget; trained with
      ``mcnc_core.param_groups`` (code lr = the grid's lr, scale lr = ratio x code lr);
    * ``nola``  - NOLA in LoRA form on the same 36 matrices: ``A = Σ a_i A_i`` (out x r), ``B = Σ b_j B_j``
      (r x in), frozen ``U(-1, 1)`` bases from a per-matrix seed, rank 8 (NOLA's LLaMA setting), the
      budget split evenly over the matrices (NOLA's recipe) and within one evenly between ``a`` and ``b``;
      ``b``'s side starts random (LoRA's kaiming-uniform variance), the output side at 0;
    * ``vera``  - ``peft.VeraConfig`` (real peft), ``r`` and target modules chosen so its trainable
      vectors (``lambda_b``: out, ``lambda_d``: r per matrix) match the budget;
    * ``lora1`` - ``peft.LoraConfig(r=1)`` on as many matrices as the budget allows;
    * ``lora16`` (its own size) and ``head`` (frozen encoder) for reference.

    Every method trains the same new head (raw, not counted, lr ``HEAD_LR``), the same steps, batch and
    schedule (Adam, 10 % warm-up, cosine). Learning rates: a 3-point grid per method, chosen on a
    validation split (1,000 words carved from the training words, seed ``VAL_SEED``) with one tuning
    seed (``TUNE_SEED``); when the best point is at an edge of the grid one more point beyond it is run;
    for MCNC the scale-lr ratio is then tried at 1/3x and 3x at the chosen code lr. The chosen setting
    is then trained with seeds 0, 1, 2 and evaluated on the (unchanged) test split of the example.
    Every run writes one JSON file (``--out``, default ``docs/peft-runs/``); existing files are reused,
    so an interrupted run resumes.

``cost``
    Time per training step (forward + backward + Adam, one batch of 16 words) of MCNC-LoRA vs peft LoRA
    r=16 (and r=1) on the same model and batch, interleaved rounds in one process, medians and the
    ratio; peak memory = peak RSS (``VmHWM``) minus RSS before the first step, over ``--mem-steps``
    steps, each method in a fresh child process (so no method inherits another's freed pages).

``bytes``
    Adapter bytes for real shapes, computed from shapes only (no download): LLaMA-2-7B/13B and
    Mistral-7B, r = 8/16/64 on every linear layer of attention + MLP: PEFT fp32 / bf16 (data bytes),
    LoRA r=1, and the MCNC bundle at the paper's setting (k=5, d=5000, width 32, depth 2) written by
    the real writer (``Bundle.to_bytes``) from a manifest built on a ``meta``-device model (the
    fingerprint holds placeholder numbers of the real format and size: no base to compute them from),
    with the decode time of every factor (``mcnc_core.peft.lora_factors``) on this CPU.

Usage::

    python benchmarks/peft_adapters.py accuracy --budgets 5k 41k --steps 200
    python benchmarks/peft_adapters.py report            # tables from docs/peft-runs/*.json
    python benchmarks/peft_adapters.py cost
    python benchmarks/peft_adapters.py bytes
    python benchmarks/peft_adapters.py --quick           # all three parts, tiny (smoke test, < 60 s)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

import minilm_delta as ex  # noqa: E402  (sets HF_HUB_OFFLINE before transformers is imported)

import mcnc_core  # noqa: E402
from benchmarks.baselines.nola import split_budget  # noqa: E402

RUNS_DIR = ROOT / "docs" / "peft-runs"
VAL_SEED = 1  # carves the validation words out of the example's training words
N_VAL = 1000
TUNE_SEED = 100  # the one seed learning rates are chosen with (never a reported seed)
SEEDS = (0, 1, 2)
HEAD_LR = 2e-3  # the example's head lr, the same for every method
BATCH, MAX_LEN = 16, 16
RANK = 16  # MCNC's LoRA factors (the paper's LLaMA setting)
NOLA_RANK = 8

ATTN = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
FFN = ("intermediate.dense", "output.dense")
ALL = ATTN + FFN
N_LAYERS = 6

# Per budget: MCNC (k, chunk_size) on rank-16 factors of all 36 matrices (chunks per factor:
# ceil(numel / d), 60 factors of 6,144 and 12 of 24,576 numbers); NOLA's total; VeRA (modules, r);
# LoRA r=1 (modules, layers).
BUDGETS: dict[str, dict] = {
    "2k": {"mcnc": (18, 6144), "nola": 2052, "vera": (("attention.self.value",), 26, 5), "lora1": (ALL[2:3], 2)},
    "5k": {
        "mcnc": (14, 2048),
        "nola": 4860,
        "vera": (("attention.self.query", "attention.self.value"), 21, 6),
        "lora1": (("attention.self.value",), 6),
    },
    "10k": {
        "mcnc": (14, 1024),
        "nola": 9720,
        "vera": (ATTN, 21, 6),
        "lora1": (("attention.self.query", "attention.self.value"), 6),
    },
    "41k": {"mcnc": (15, 256), "nola": 41472, "vera": (ALL, 576, 6), "lora1": (ALL, 6)},
}
# 3-point grids (factor ~3 apart); MCNC's is the code lr (scales: ratio x code lr).
GRIDS = {
    "mcnc": (3e-3, 1e-2, 3e-2),
    "nola": (1e-3, 3e-3, 1e-2),
    "vera": (3e-3, 1e-2, 3e-2),
    "lora1": (2e-3, 6e-3, 1.8e-2),
    "lora16": (1e-3, 3e-3, 1e-2),
    "head": (HEAD_LR,),
}
SCALE_RATIOS = (1 / 3, 3.0)  # tried at MCNC's chosen code lr (ratio 1 is the grid itself)
LABELS = {
    "mcnc": "MCNC on LoRA r=16 factors",
    "nola": "NOLA (LoRA form, r=8)",
    "vera": "VeRA (peft)",
    "lora1": "LoRA r=1 (peft)",
    "lora16": "LoRA r=16 (peft), all 36",
    "head": "head only (frozen encoder)",
}


# ------------------------------------------------------------------------------------------ models
def module_regex(modules: tuple[str, ...], layers: int) -> str:
    """peft ``target_modules`` regex (full match) for ``modules`` of encoder layers ``0..layers-1``."""
    alts = "|".join(re.escape(m) for m in modules)
    return rf"encoder\.layer\.({'|'.join(str(i) for i in range(layers))})\.({alts})"


def encoder_linears(model: ex.Classifier) -> list[nn.Linear]:
    return [m for n, m in model.bert.encoder.named_modules() if isinstance(m, nn.Linear)]


class NOLAFactors(nn.Module):
    """NOLA on one Linear, in LoRA form: ``y = base(x) + (x Bᵀ) Aᵀ`` with ``B = Σ b_j B_j`` (r x in,
    random start) and ``A = Σ a_i A_i`` (out x r, ``a = 0`` at start). Bases: frozen ``U(-1, 1)`` from
    ``basis_seed``, times ``sqrt(3 / n)`` so a unit coefficient vector has unit-RMS output (under Adam
    exactly a change of learning rate; it lets one lr grid serve every budget)."""

    def __init__(self, lin: nn.Linear, r: int, n_coef: int, basis_seed: int, gen: torch.Generator) -> None:
        super().__init__()
        n_in, n_out = n_coef - n_coef // 2, n_coef // 2
        self.r, self.fin, self.fout = r, lin.in_features, lin.out_features
        g = torch.Generator().manual_seed(basis_seed)
        bi = (torch.rand(n_in, r * self.fin, generator=g) * 2 - 1) * math.sqrt(3 / n_in)
        bo = (torch.rand(n_out, self.fout * r, generator=g) * 2 - 1) * math.sqrt(3 / n_out)
        self.register_buffer("basis_in", bi, persistent=False)
        self.register_buffer("basis_out", bo, persistent=False)
        # rms(B) = rms(c) (unit-RMS bases): LoRA's kaiming-uniform(a=sqrt 5) start, 1/sqrt(3 in).
        self.c_in = nn.Parameter(torch.randn(n_in, generator=gen) / math.sqrt(3 * self.fin * n_in) * math.sqrt(n_in))
        self.c_out = nn.Parameter(torch.zeros(n_out))

    def delta(self, x: Tensor) -> Tensor:
        b = (self.c_in @ self.basis_in).view(self.r, self.fin)
        a = (self.c_out @ self.basis_out).view(self.fout, self.r)
        return F.linear(F.linear(x, b), a)


def _nola_hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    return out + module.nola.delta(args[0])


def add_nola(model: ex.Classifier, total: int, seed: int) -> int:
    for p in model.bert.parameters():
        p.requires_grad_(False)
    lins = encoder_linears(model)
    shares = split_budget(total, [1] * len(lins), 2)
    gen = torch.Generator().manual_seed(seed)
    for i, (lin, c) in enumerate(zip(lins, shares, strict=True)):
        lin.nola = NOLAFactors(lin, NOLA_RANK, c, basis_seed=1_000_003 + i, gen=gen)
        lin.register_forward_hook(_nola_hook)
    return sum(p.numel() for lin in lins for p in lin.nola.parameters())


def add_peft(model: ex.Classifier, cfg) -> int:
    from peft import get_peft_model

    model.bert = get_peft_model(model.bert, cfg)
    return sum(p.numel() for p in model.bert.parameters() if p.requires_grad)


def make(method: str, budget: str, seed: int) -> tuple[ex.Classifier, int, str]:
    """A fresh classifier with ``method``'s adapter at ``budget``; ``(model, stored numbers, details)``."""
    from peft import LoraConfig, VeraConfig

    model = ex.build(seed)
    b = BUDGETS.get(budget, {})
    if method == "mcnc":
        k, d = b["mcnc"]
        cfg = mcnc_core.MCNCConfig(
            mode="delta", rank=RANK, k=k, chunk_size=d, seed=0, init_seed=seed, targets=ex.TARGETS,
            exclude=ex.EXCLUDE, trainable=("head.*",), base_name="all-MiniLM-L6-v2",
        )  # fmt: skip
        mcnc_core.compress(model, cfg)
        targets = model._mcnc_state.targets
        assert len(targets) == 36 and all(mw.adapter == "linear" for mw in targets.values())
        n = sum(mw.alpha.numel() + mw.beta.numel() for mw in targets.values())
        w = cfg.width
        return model, n, f"rank {RANK}, k={k}, d={d}, width {w}, depth {cfg.depth}, L={cfg.bound:g}, 36 matrices"
    if method == "nola":
        n = add_nola(model, b["nola"], seed)
        return model, n, f"rank {NOLA_RANK}, {b['nola']} coefficients split evenly over 36 matrices"
    if method == "vera":
        mods, r, layers = b["vera"]
        cfg = VeraConfig(r=r, target_modules=module_regex(mods, layers), projection_prng_key=0, vera_dropout=0.0)
        n = add_peft(model, cfg)
        return model, n, f"r={r} on {'/'.join(mods)} of {layers} layers"
    if method in ("lora1", "lora16"):
        mods, layers = b["lora1"] if method == "lora1" else (ALL, N_LAYERS)
        r = 1 if method == "lora1" else 16
        cfg = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=module_regex(mods, layers))
        n = add_peft(model, cfg)
        return model, n, f"r={r} on {'/'.join(mods)} of {layers} layers"
    if method == "head":
        for p in model.bert.parameters():
            p.requires_grad_(False)
        return model, 0, "frozen encoder"
    raise ValueError(method)


def groups_for(model: nn.Module, method: str, lr: float, scale_ratio: float) -> list[dict]:
    if method == "mcnc":
        return mcnc_core.param_groups(model, lr, scale_lr=lr * scale_ratio, raw_lr=HEAD_LR)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("head.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    return [g for g in ({"params": head, "lr": HEAD_LR}, {"params": body, "lr": lr}) if g["params"]]


# -------------------------------------------------------------------------------------------- data
_CACHE: dict = {}


def data() -> tuple:
    """``(tok, words, labels, train, val, test)``: the example's split, 1,000 validation words carved
    out of its training words (seed ``VAL_SEED``); methods train on the rest."""
    if not _CACHE:
        from transformers import BertTokenizerFast
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        tok = BertTokenizerFast.from_pretrained(str(ex.model_dir()), local_files_only=True)
        words, labels = ex.load_vader()
        tr, te = ex.split(len(words))
        p = torch.randperm(len(tr), generator=torch.Generator().manual_seed(VAL_SEED))
        _CACHE["d"] = (tok, words, labels, tr[p[N_VAL:]], tr[p[:N_VAL]], te)
    return _CACHE["d"]


# ---------------------------------------------------------------------------------------- accuracy
def run_name(budget: str, method: str, phase: str, lr: float, ratio: float, seed: int) -> str:
    sr = "" if ratio == 1 else f"__sr{ratio:.3g}"
    return f"{budget}__{method}__{phase}__lr{lr:g}{sr}__seed{seed}.json"


def run_one(out: Path, budget, method, phase, lr, seed, *, steps, ratio=1.0, limit=None, log=print) -> dict:
    path = out / run_name(budget, method, phase, lr, ratio, seed)
    if path.exists():
        r = json.loads(path.read_text())
        if r.get("steps") == steps:
            return r
    tok, words, labels, tr, val, te = data()
    model, numbers, details = make(method, budget, seed)
    groups = groups_for(model, method, lr, ratio)
    kw = {"steps": steps, "bs": BATCH, "max_len": MAX_LEN, "seed": seed}
    secs = ex.train(model, tok, (words, labels, tr, None), param_groups=groups, **kw)
    split = val if phase == "tune" else te
    acc, _ = ex.evaluate(model, tok, (words, labels, None, split), max_len=MAX_LEN, limit=limit)
    r = {
        "budget": budget, "method": method, "label": LABELS[method], "details": details, "phase": phase,
        "split": "validation" if phase == "tune" else "test", "n_eval": len(split[:limit] if limit else split),
        "stored_numbers": numbers, "lr": lr, "scale_lr_ratio": ratio if method == "mcnc" else None,
        "head_lr": HEAD_LR, "seed": seed, "acc": acc, "steps": steps, "batch": BATCH, "max_len": MAX_LEN,
        "train_seconds": secs, "s_per_step": secs / steps, "n_train": len(tr), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1) + "\n")
    log(
        f"  {budget:>4} {method:>6} {phase:>4} lr={lr:<8g} sr={ratio:<5.3g} seed={seed:<3} numbers={numbers:<7,} "
        f"{r['split']} acc {100 * acc:.2f} %  {secs / steps * 1000:.0f} ms/step",
        flush=True,
    )
    return r


def tune(out: Path, budget: str, method: str, *, steps: int, limit, extend: bool, grid=None) -> tuple[float, float]:
    """Chosen ``(lr, scale ratio)`` on the validation split (tuning seed); ties go to the smaller lr."""
    grid = list(grid or GRIDS[method])
    res = {lr: run_one(out, budget, method, "tune", lr, TUNE_SEED, steps=steps, limit=limit)["acc"] for lr in grid}
    if extend and len(grid) > 1:
        for _ in range(2):  # at most two extra points, only while the best sits at an edge
            best = max(sorted(res), key=lambda x: res[x])
            lrs = sorted(res)
            if best not in (lrs[0], lrs[-1]):
                break
            nxt = best / 3 if best == lrs[0] else best * 3
            res[nxt] = run_one(out, budget, method, "tune", nxt, TUNE_SEED, steps=steps, limit=limit)["acc"]
    best = max(sorted(res), key=lambda x: res[x])
    ratio = 1.0
    if method == "mcnc" and extend:
        rr = {1.0: res[best]}
        for q in SCALE_RATIOS:
            rr[q] = run_one(out, budget, method, "tune", best, TUNE_SEED, steps=steps, ratio=q, limit=limit)["acc"]
        ratio = max([1.0, *SCALE_RATIOS], key=lambda q: rr[q])  # ties: the recommended ratio 1
    return best, ratio


def cmd_accuracy(a: argparse.Namespace) -> None:
    out = Path(a.out)
    print(
        f"accuracy: budgets={a.budgets} methods={a.methods} steps={a.steps} batch={BATCH} max_len={MAX_LEN} "
        f"head_lr={HEAD_LR} tune seed {TUNE_SEED}, test seeds {a.seeds}; threads={torch.get_num_threads()} "
        f"torch={torch.__version__}",
        flush=True,
    )
    _, words, _, tr, val, te = data()
    print(f"VADER: {len(words)} entries; train {len(tr)} / validation {len(val)} / test {len(te)}", flush=True)
    jobs = [(b, m) for b in a.budgets for m in a.methods if m in ("mcnc", "nola", "vera", "lora1")]
    jobs += [("ref", m) for m in a.methods if m in ("lora16", "head")]
    for budget, method in jobs:
        t0 = time.perf_counter()
        grid = GRIDS[method] if not a.quick else GRIDS[method][len(GRIDS[method]) // 2 :][:1]
        lr, ratio = tune(out, budget, method, steps=a.steps, limit=a.limit, extend=not a.quick, grid=grid)
        print(f"  -> {budget} {method}: chosen lr {lr:g}" + (f", scale ratio {ratio:.3g}" if method == "mcnc" else ""))
        for s in a.seeds:
            run_one(out, budget, method, "test", lr, s, steps=a.steps, ratio=ratio, limit=a.limit)
        print(f"  ({budget} {method}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(report(out, a.steps))


def _short(details: str) -> str:
    full = "/".join(ALL) + f" of {N_LAYERS} layers"
    return details.replace(full, "all 36 matrices").replace("attention.self.", "").replace("attention.output.", "o.")


def report(out: Path, steps: int | None = None) -> str:
    """Markdown tables from the run files in ``out``."""
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*__*.json"))]
    runs = [r for r in runs if steps is None or r["steps"] == steps]
    order = {b: i for i, b in enumerate([*BUDGETS, "ref"])}
    morder = {m: i for i, m in enumerate(LABELS)}
    keys = sorted({(r["budget"], r["method"]) for r in runs}, key=lambda k: (order.get(k[0], 99), morder[k[1]]))
    lines = [
        "| budget | method | stored numbers | details | chosen lr (val acc %) | test acc % (mean ± std, n) | ms/step |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    grid_lines = ["| budget | method | validation acc % by lr (tuning seed) |", "|---|---|---|"]
    for b, m in keys:
        rs = [r for r in runs if (r["budget"], r["method"]) == (b, m)]
        tunes = [r for r in rs if r["phase"] == "tune"]
        tests = [r for r in rs if r["phase"] == "test"]
        if not tests:
            continue
        lr, ratio = tests[0]["lr"], tests[0].get("scale_lr_ratio") or 1.0
        if any(r["lr"] != lr or (r.get("scale_lr_ratio") or 1.0) != ratio for r in tests):
            continue
        chosen = [r for r in tunes if r["lr"] == lr and (r.get("scale_lr_ratio") or 1.0) == ratio]
        accs = [100 * r["acc"] for r in tests]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        ms = statistics.median(1000 * r["s_per_step"] for r in tests)
        lr_s = f"{lr:g}" + (f", scale x{ratio:.3g}" if m == "mcnc" else "")
        lr_s += f" ({100 * chosen[0]['acc']:.1f})" if chosen else ""
        lines.append(
            f"| {b} | {LABELS[m]} | {tests[0]['stored_numbers']:,} | {_short(tests[0]['details'])} | {lr_s} | "
            f"{statistics.mean(accs):.1f} ± {sd:.1f} ({len(accs)}) | {ms:.0f} |"
        )
        cells = []
        for r in sorted(
            tunes, key=lambda r: ((r.get("scale_lr_ratio") or 1.0) != 1, r["lr"], r.get("scale_lr_ratio") or 1)
        ):
            q = r.get("scale_lr_ratio") or 1.0
            cells.append(f"{r['lr']:g}{'' if q == 1 else f' (scale x{q:.3g})'}: {100 * r['acc']:.1f}")
        if cells:
            grid_lines.append(f"| {b} | {LABELS[m]} | {'; '.join(cells)} |")
    sens_lines = ["| budget | method | lr | scale ratio | test acc % (mean ± std, n) |", "|---|---|---:|---:|---:|"]
    for b, m in keys:
        rs = [r for r in runs if (r["budget"], r["method"]) == (b, m) and r["phase"] in ("test", "sens")]
        if not any(r["phase"] == "sens" for r in rs):
            continue
        for cfg in sorted({(r["lr"], r.get("scale_lr_ratio") or 1.0) for r in rs}):
            accs = [100 * r["acc"] for r in rs if (r["lr"], r.get("scale_lr_ratio") or 1.0) == cfg]
            sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            tag = " (val-chosen)" if any(r["phase"] == "test" and (r["lr"], r.get("scale_lr_ratio") or 1.0) == cfg
                                         for r in rs) else ""  # fmt: skip
            sens_lines.append(f"| {b} | {LABELS[m]}{tag} | {cfg[0]:g} | {cfg[1]:.3g} | "
                              f"{statistics.mean(accs):.1f} ± {sd:.1f} ({len(accs)}) |")  # fmt: skip
    # Paired by seed (a seed fixes the head init and the batch order for every method).
    pair_lines = ["| budget | MCNC minus | per seed (points) | mean ± std |", "|---|---|---|---:|"]
    chosen = {}
    for b, m in keys:
        tests = [r for r in runs if (r["budget"], r["method"], r["phase"]) == (b, m, "test")]
        if tests and len({(r["lr"], r.get("scale_lr_ratio")) for r in tests}) == 1:
            chosen[b, m] = {r["seed"]: 100 * r["acc"] for r in tests}
    for b, m in keys:
        if m == "mcnc" or (b, "mcnc") not in chosen or (b, m) not in chosen:
            continue
        seeds = sorted(set(chosen[b, "mcnc"]) & set(chosen[b, m]))
        d = [chosen[b, "mcnc"][x] - chosen[b, m][x] for x in seeds]
        if len(d) > 1:
            cells = ", ".join(f"{x:+.2f}" for x in d)
            pair_lines.append(
                f"| {b} | {LABELS[m]} | {cells} | {statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} |"
            )
    out_s = "\n".join(lines) + "\n\n" + "\n".join(pair_lines) + "\n\n" + "\n".join(grid_lines)
    if any(r["phase"] == "sens" for r in runs):
        out_s += "\n\n" + "\n".join(sens_lines)
    return out_s


def cmd_sens(a: argparse.Namespace) -> None:
    for seed in a.seeds:
        run_one(Path(a.out), a.budget, a.method, "sens", a.lr, seed, steps=a.steps, ratio=a.ratio)


# -------------------------------------------------------------------------------------------- cost
COST_METHODS = {
    "mcnc-41k": ("mcnc", "41k"),
    "mcnc-5k": ("mcnc", "5k"),
    "lora16": ("lora16", "ref"),
    "lora1-41k": ("lora1", "41k"),
}


def _cost_setup(name: str, pad: str = "max"):
    """One training step of ``name`` on a fixed batch: the first ``BATCH`` training words, padded to
    ``MAX_LEN`` tokens (``pad="max"``) or to the longest word (``"batch"``, as the training loop does)."""
    method, budget = COST_METHODS[name]
    tok, words, labels, tr, _, _ = data()
    model, n, _ = make(method, budget, 0)
    opt = torch.optim.Adam(groups_for(model, method, 1e-3, 1.0))
    idx = tr[:BATCH].tolist()
    padding = "max_length" if pad == "max" else True
    enc = tok([words[t] for t in idx], padding=padding, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    y = torch.tensor([labels[t] for t in idx])
    model.train()

    def step() -> None:
        loss = F.cross_entropy(model(enc["input_ids"], enc["attention_mask"]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, n, model, int(enc["input_ids"].shape[1])


def saved_bytes(step, model: nn.Module) -> int:
    """Bytes autograd saves for backward in one ``step`` (storages other than the model's own
    parameters and buffers, each counted once): the activation memory of a training step."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def mem_child(name: str, steps: int, pad: str) -> None:
    torch.set_num_threads(1)
    import ctypes
    import gc

    step, _, model, _ = _cost_setup(name, pad)
    # The weights are memory-mapped from the safetensors file and fault in when first read: compress
    # reads them all (base digest), peft does not, so read every tensor before the baseline. Setup also
    # leaves freed heap pages resident; give them back, or the steps would reuse them unseen.
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.sum()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss0 = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
        f.write("5")
    for _ in range(steps):
        step()
    print(json.dumps({"name": name, "peak_delta_bytes": (_rss_kib("VmHWM") - rss0) * 1024, "rss0": rss0 * 1024}))


def cmd_cost(a: argparse.Namespace) -> dict:
    names = list(COST_METHODS)
    steps = {n: _cost_setup(n, a.pad) for n in names}
    for n in names:  # warm-up (optimizer state, allocator)
        for _ in range(2):
            steps[n][0]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(a.rounds):
        for n in names if rnd % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(a.steps_per_round):
                steps[n][0]()
            times[n].append((time.perf_counter() - t0) / a.steps_per_round)
    mem = {}
    for n in names:
        proc = subprocess.run(
            [sys.executable, __file__, "_mem", n, str(a.mem_steps), a.pad], capture_output=True, text=True, check=True
        )
        mem[n] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_delta_bytes"]
    med = {n: statistics.median(v) for n, v in times.items()}
    saved = {n: saved_bytes(steps[n][0], steps[n][2]) for n in names}
    res = {
        "methods": {n: {"stored_numbers": steps[n][1], "s_per_step_median": med[n], "s_per_step_rounds": times[n],
                        "peak_rss_delta_bytes": mem[n], "saved_for_backward_bytes": saved[n]} for n in names},
        "ratio_time_mcnc41k_vs_lora16": med["mcnc-41k"] / med["lora16"],
        "ratio_time_mcnc5k_vs_lora16": med["mcnc-5k"] / med["lora16"],
        "ratio_mem_mcnc41k_vs_lora16": mem["mcnc-41k"] / mem["lora16"],
        "ratio_mem_mcnc5k_vs_lora16": mem["mcnc-5k"] / mem["lora16"],
        "ratio_saved_mcnc41k_vs_lora16": saved["mcnc-41k"] / saved["lora16"],
        "batch": BATCH, "max_len": MAX_LEN, "pad": a.pad,
        "seq_len": steps[names[0]][3], "rounds": a.rounds, "steps_per_round": a.steps_per_round,
        "mem_steps": a.mem_steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    print(f"cost: batch {BATCH} x {steps[names[0]][3]} tokens (pad={a.pad}), {a.rounds} interleaved rounds x "
          f"{a.steps_per_round} steps, "
          f"threads {torch.get_num_threads()}; memory: peak RSS - RSS before step 1, {a.mem_steps} steps, "
          "fresh process per method")  # fmt: skip
    print(
        "| method | stored/trained numbers | ms/step (median of rounds) | peak RSS delta MiB | saved for backward MiB |"
    )
    print("|---|---:|---:|---:|---:|")
    for n in names:
        m = res["methods"][n]
        print(
            f"| {n} | {m['stored_numbers']:,} | {1000 * med[n]:.1f} | {mem[n] / 2**20:.1f} | {saved[n] / 2**20:.1f} |"
        )
    r = res
    print(
        f"ratio MCNC-LoRA(41k) / peft LoRA r=16: time {r['ratio_time_mcnc41k_vs_lora16']:.2f}x, "
        f"memory {r['ratio_mem_mcnc41k_vs_lora16']:.2f}x (saved {r['ratio_saved_mcnc41k_vs_lora16']:.2f}x);"
        f" MCNC-LoRA(5k): time {r['ratio_time_mcnc5k_vs_lora16']:.2f}x, memory {r['ratio_mem_mcnc5k_vs_lora16']:.2f}x"
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


# ------------------------------------------------------------------------------------------- bytes
SHAPES = {  # hidden, intermediate, layers, k/v out features
    "LLaMA-2-7B": (4096, 11008, 32, 4096, 32000),
    "LLaMA-2-13B": (5120, 13824, 40, 5120, 32000),
    "Mistral-7B": (4096, 14336, 32, 1024, 32000),
}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def meta_model(name: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, layers, kv, vocab = SHAPES[name]
    heads = h // 128
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads * kv // h, vocab_size=vocab)  # fmt: skip
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def paper_bundle(
    model: nn.Module, r: int, base_name: str = "base", k: int = 5, d: int = 5000, width: int = 32, depth: int = 2
):
    """The real ``Bundle`` an MCNC-LoRA (paper setting) of ``model``'s attention + MLP linears would be."""
    from mcnc_core.bundle import Bundle
    from mcnc_core.fingerprint import N_SAMPLES
    from mcnc_core.manifest import BaseRef, TensorEntry
    from mcnc_core.safetensors_io import TORCH_TO_DTYPE

    cfg = mcnc_core.MCNCConfig(mode="delta", rank=r, k=k, chunk_size=d, width=width, depth=depth,
                               targets=tuple(f"*.{m}.weight" for m in LINEARS), base_name=base_name)  # fmt: skip
    entries, off = [], 0
    for name, t in model.state_dict().items():
        dt = TORCH_TO_DTYPE[torch.bfloat16]
        if any(name.endswith(f".{m}.weight") for m in LINEARS):
            e = TensorEntry(name, tuple(t.shape), dt, "mcnc", r)
            c = e.chunks_needed(d)
            entries.append(TensorEntry(name, tuple(t.shape), dt, "mcnc", r, off, c))
            off += c
        else:
            entries.append(TensorEntry(name, tuple(t.shape), dt, "base"))
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(off, k, generator=g) * 2 - 1
    beta = torch.rand(off, generator=g) * 0.1
    # Placeholder fingerprint: the real one is [l2, sum, 8 samples] of each reconstructed tensor
    # (float JSON numbers); random doubles have the same textual size.
    fp = {e.name: torch.randn(2 + N_SAMPLES, generator=g, dtype=torch.float64).tolist() for e in entries}
    return Bundle(cfg.generator_spec(), cfg, tuple(entries), alpha, beta, {}, BaseRef(cfg.base_name, "0" * 64), fp)


def cmd_bytes(a: argparse.Namespace) -> dict:
    from mcnc_core.peft import lora_factors

    rows, res = [], {"models": {}}
    for mname in a.models:
        model = meta_model(mname)
        lin = [(n, t.shape) for n, t in model.state_dict().items() if any(n.endswith(f".{m}.weight") for m in LINEARS)]
        per_r = sum(s[0] + s[1] for _, s in lin)
        for r in a.ranks:
            n = per_r * r
            bundle = paper_bundle(model, r, mname)
            blob = bundle.to_bytes()
            numbers = bundle.alpha.numel() + bundle.beta.numel()
            row = {"model": mname, "r": r, "matrices": len(lin), "lora_numbers": n, "peft_fp32": 4 * n,
                   "peft_bf16": 2 * n, "lora1_numbers": per_r, "lora1_bf16": 2 * per_r, "mcnc_numbers": numbers,
                   "mcnc_chunks": bundle.alpha.shape[0], "mcnc_bundle_bytes": len(blob),
                   "mcnc_data_bytes": 4 * numbers}  # fmt: skip
            if mname == a.decode_model and r == a.decode_rank:
                bundle = mcnc_core.Bundle.from_bytes(blob)
                names = [e.name for e in bundle.manifest if e.storage == "mcnc"][: a.decode_limit]
                times = []
                for _ in range(a.decode_repeats):
                    t0 = time.perf_counter()
                    for nm in names:
                        lora_factors(bundle, nm)
                    times.append(time.perf_counter() - t0)
                row["decode_seconds_median"] = statistics.median(times)
                row["decode_seconds_all"] = times
                row["decoded_matrices"] = len(names)
                row["decoded_factor_numbers"] = sum(math.prod(f) for nm in names for f in bundle.entry(nm).factors())
            rows.append(row)
    res["rows"] = rows
    res["threads"] = torch.get_num_threads()
    print("| model | r | PEFT numbers | PEFT fp32 B | PEFT bf16 B | LoRA r=1 numbers (bf16 B) | MCNC stored numbers "
          "| MCNC bundle B | bf16 / bundle |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        print(f"| {x['model']} | {x['r']} | {x['lora_numbers']:,} | {x['peft_fp32']:,} | {x['peft_bf16']:,} | "
              f"{x['lora1_numbers']:,} ({x['lora1_bf16']:,}) | {x['mcnc_numbers']:,} | {x['mcnc_bundle_bytes']:,} | "
              f"{x['peft_bf16'] / x['mcnc_bundle_bytes']:.0f}x |")  # fmt: skip
    for x in rows:
        if "decode_seconds_median" in x:
            print(f"decode of {x['model']} r={x['r']} factors ({x['decoded_matrices']} matrices, "
                  f"{x['decoded_factor_numbers']:,} numbers) via mcnc_core.peft.lora_factors: "
                  f"{x['decode_seconds_median']:.3f} s (median of {len(x['decode_seconds_all'])}), "
                  f"threads {res['threads']}")  # fmt: skip
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


# ------------------------------------------------------------------------------------------ export
def cmd_export(a: argparse.Namespace) -> dict:
    """Train MCNC-LoRA briefly, export the bundle as a PEFT adapter, load it into real peft on a fresh
    model (another head init), compare logits; file sizes of the bundle and the adapter."""
    from peft import PeftModel

    from mcnc_core.peft import peft_adapter_files, peft_metadata

    tok, words, labels, tr, _, te = data()
    model, n, details = make("mcnc", a.budget, 0)
    groups = groups_for(model, "mcnc", a.lr, 1.0)
    ex.train(
        model, tok, (words, labels, tr, None), param_groups=groups, steps=a.steps, bs=BATCH, max_len=MAX_LEN, seed=0
    )
    acc, logits = ex.evaluate(model, tok, (words, labels, None, te), max_len=MAX_LEN, limit=a.limit)
    bundle = mcnc_core.export_bundle(model, metadata=peft_metadata(model))
    blob = bundle.to_bytes()
    res = {"budget": a.budget, "steps": a.steps, "lr": a.lr, "stored_numbers": n, "details": details,
           "bundle_bytes": len(blob), "test_acc_trained": acc}  # fmt: skip
    for dt in (torch.float32, torch.bfloat16):
        files = peft_adapter_files(bundle, dtype=dt)
        tag = str(dt).split(".")[1]
        res[f"peft_{tag}_bytes"] = sum(len(v) for v in files.values())
        with tempfile.TemporaryDirectory() as tmp:
            for name, data_ in files.items():
                (Path(tmp) / name).write_bytes(data_)
            fresh = ex.build(1)  # another head init: the head must come from the adapter
            loaded = PeftModel.from_pretrained(fresh, tmp)
            acc2, logits2 = ex.evaluate(loaded, tok, (words, labels, None, te), max_len=MAX_LEN, limit=a.limit)
        res[f"peft_{tag}_max_logit_diff"] = float((logits2 - logits).abs().max())
        res[f"peft_{tag}_same_predictions"] = bool(torch.equal(logits2.argmax(1), logits.argmax(1)))
        res[f"peft_{tag}_test_acc"] = acc2
    print(
        f"export: MCNC-LoRA {a.budget} ({details}), {a.steps} steps: bundle {len(blob):,} B; PEFT adapter "
        f"fp32 {res['peft_float32_bytes']:,} B (max |logit diff| {res['peft_float32_max_logit_diff']:.3g}, "
        f"same predictions {res['peft_float32_same_predictions']}), bf16 {res['peft_bfloat16_bytes']:,} B "
        f"(max |logit diff| {res['peft_bfloat16_max_logit_diff']:.3g}, "
        f"test acc {100 * res['peft_bfloat16_test_acc']:.1f} vs {100 * acc:.1f} %)"
    )
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_mem"]:
        mem_child(argv[1], int(argv[2]), argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="every part, tiny (smoke test, < 60 s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick-dir", default=None, help="--quick: keep its run files here (default: a temp dir)")
    sub = p.add_subparsers(dest="cmd")
    pa = sub.add_parser("accuracy")
    pa.add_argument("--budgets", nargs="+", default=["5k", "41k"], choices=list(BUDGETS))
    pa.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    pa.add_argument("--steps", type=int, default=200)
    pa.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    pa.add_argument("--out", default=str(RUNS_DIR))
    pa.add_argument("--limit", type=int, default=None, help="evaluate on the first N words only")
    ps = sub.add_parser("sens", help="a fixed (lr, scale ratio) on the test seeds: a sensitivity check, never tuning")
    ps.add_argument("--budget", default="41k", choices=list(BUDGETS))
    ps.add_argument("--method", default="mcnc", choices=list(LABELS))
    ps.add_argument("--lr", type=float, required=True)
    ps.add_argument("--ratio", type=float, default=1.0)
    ps.add_argument("--steps", type=int, default=200)
    ps.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ps.add_argument("--out", default=str(RUNS_DIR))
    pr = sub.add_parser("report")
    pr.add_argument("--out", default=str(RUNS_DIR))
    pr.add_argument("--steps", type=int, default=None)
    pc = sub.add_parser("cost")
    pc.add_argument("--rounds", type=int, default=6)
    pc.add_argument("--steps-per-round", type=int, default=5)
    pc.add_argument("--mem-steps", type=int, default=3)
    pc.add_argument(
        "--pad", choices=["max", "batch"], default="max", help="pad the batch to MAX_LEN or its longest word"
    )
    pc.add_argument("--json", default=str(RUNS_DIR / "cost.json"))
    pe = sub.add_parser("export")
    pe.add_argument("--budget", default="41k", choices=list(BUDGETS))
    pe.add_argument("--steps", type=int, default=200)
    pe.add_argument("--lr", type=float, default=1e-2)
    pe.add_argument("--limit", type=int, default=None)
    pe.add_argument("--json", default=str(RUNS_DIR / "export.json"))
    pb = sub.add_parser("bytes")
    pb.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    pb.add_argument("--ranks", nargs="+", type=int, default=[8, 16, 64])
    pb.add_argument("--decode-model", default="LLaMA-2-7B")
    pb.add_argument("--decode-rank", type=int, default=16)
    pb.add_argument("--decode-limit", type=int, default=None, help="decode only the first N matrices")
    pb.add_argument("--decode-repeats", type=int, default=3)
    pb.add_argument("--json", default=str(RUNS_DIR / "bytes.json"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = a.quick_dir or tmp_dir
            t0 = time.perf_counter()
            q = p.parse_args(["accuracy", "--budgets", "5k", "--steps", "3", "--seeds", "0", "--out", tmp,
                              "--limit", "48", "--methods", "mcnc", "nola", "vera", "lora1"])  # fmt: skip
            q.quick = True
            cmd_accuracy(q)
            c = p.parse_args(["cost", "--rounds", "1", "--steps-per-round", "1", "--mem-steps", "1",
                              "--json", f"{tmp}/cost.json"])  # fmt: skip
            cost = cmd_cost(c)
            b = p.parse_args(["bytes", "--models", "LLaMA-2-7B", "--ranks", "16", "--decode-limit", "7",
                              "--decode-repeats", "1", "--json", f"{tmp}/bytes.json"])  # fmt: skip
            cmd_bytes(b)
            e = p.parse_args(
                ["export", "--budget", "5k", "--steps", "3", "--limit", "48", "--json", f"{tmp}/export.json"]
            )
            cmd_export(e)
            assert all(math.isfinite(v["s_per_step_median"]) for v in cost["methods"].values())
            print(f"quick: done in {time.perf_counter() - t0:.1f} s")
        return 0
    if a.cmd is None:
        p.error("a sub-command (accuracy, report, cost, bytes, export) or --quick is required")
    a.quick = False
    {"accuracy": cmd_accuracy, "cost": cmd_cost, "bytes": cmd_bytes, "export": cmd_export, "sens": cmd_sens}.get(
        a.cmd, lambda x: print(report(Path(x.out), x.steps))
    )(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
