"""Train an MCNC-compressed model inside ``transformers.Trainer`` (your own loop), then ship a bundle.

The model is a plain ``nn.Module`` (an MLP 64 -> 128 -> 10 on scikit-learn's 8x8 ``digits``,
bundled with scikit-learn: no download) whose ``forward(x, labels)`` returns ``{"loss", "logits"}``,
the one thing ``Trainer`` asks of a model. MCNC enters in two lines:

    mc.compress(model, mc.MCNCConfig(chunk_size=256))
    trainer = Trainer(..., optimizers=(torch.optim.Adam(mc.param_groups(model, total_steps=steps)), None))

``Trainer`` builds its own schedule (cosine here) around the optimizer we pass, from each param
group's own rate, so codes, scales and biases keep the recipe's ratios. ``total_steps`` is the
schedule's horizon (``TrainingArguments.max_steps``): the recipe picks the code lr for it.
After training: ``export_bundle`` -> ``save_bundle`` -> ``load_bundle`` -> ``reconstruct_into``
a fresh uncompressed model, which must score exactly what the trained model scores.

Usage::

    python examples/trainer_digits.py                  # 1500 steps, ~1 min on one core
    python examples/trainer_digits.py --quick          # smoke run for the test suite (< 30 s)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # Trainer needs nothing from the Hub here

import mcnc_core as mc

DATA_SEED = 0


class DigitsMLP(nn.Module):
    """64 -> 128 -> 10; ``forward`` returns the loss when labels are given (Trainer's contract)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        logits = self.net(x)  # (batch, 10)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Rows(torch.utils.data.Dataset):
    """``{"x", "labels"}`` rows: what ``Trainer``'s default collator stacks into a batch."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def load_digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """digits, features scaled to [0, 1]: 1437 train / 360 test after a fixed shuffle."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target).long()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(DATA_SEED))
    tr, te = perm[:1437], perm[1437:]
    return x[tr], y[tr], x[te], y[te]


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x)["logits"].argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    from transformers import Trainer, TrainingArguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1500; --quick: 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="bundle path (default: a temporary file)")
    p.add_argument("--quick", action="store_true", help="smoke run: 150 steps")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    steps = a.steps or (150 if a.quick else 1500)
    x, y, xt, yt = load_digits()

    torch.manual_seed(a.seed)
    model = DigitsMLP()
    mc.compress(model, mc.MCNCConfig(chunk_size=256, seed=a.seed, init_seed=a.seed))
    opt = torch.optim.Adam(mc.param_groups(model, total_steps=steps))

    with tempfile.TemporaryDirectory() as work:
        args = TrainingArguments(
            output_dir=work,
            max_steps=steps,
            per_device_train_batch_size=64,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            save_strategy="no",
            report_to=[],
            logging_steps=max(1, steps // 5),
            disable_tqdm=True,
            use_cpu=True,
            seed=a.seed,
            remove_unused_columns=False,  # the model's inputs are "x" and "labels", no tokenizer
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Rows(x, y), optimizers=(opt, None))
        result = trainer.train()
    acc_trained = accuracy(model, xt, yt)

    out = a.out or Path(tempfile.mkdtemp()) / "digits.mcnc.safetensors"
    mc.save_bundle(mc.export_bundle(model), out)
    fresh = DigitsMLP()  # uncompressed, random init: every weight and bias comes from the bundle
    mc.reconstruct_into(mc.load_bundle(out), fresh, verify=True)
    acc_rebuilt = accuracy(fresh, xt, yt)
    dense = sum(t.numel() * 4 for t in fresh.state_dict().values())

    print(f"steps: {steps}  final train loss: {result.training_loss:.4f}")
    print(f"code lr: {opt.param_groups[0]['initial_lr']:.4g} (param_groups(total_steps={steps}))")
    print(f"test accuracy (trained): {100 * acc_trained:.2f} %")
    print(f"test accuracy (reconstructed): {100 * acc_rebuilt:.2f} %")
    print(f"bundle: {out}  bundle bytes: {out.stat().st_size}  float32 weights+biases bytes: {dense}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
