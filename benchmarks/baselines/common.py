"""The one training loop every method shares, and the reparameterisation wrapper of the baselines."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["TARGET_TYPES", "Reparam", "accuracy", "fit", "target_weights", "train"]

TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def target_weights(net: nn.Module) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Linear/Conv module, by parameter name (what MCNC compresses by default)."""
    return {
        f"{name}.weight" if name else "weight": m.weight
        for name, m in net.named_modules()
        if isinstance(m, TARGET_TYPES)
    }


def fan_in(shape: torch.Size | tuple[int, ...]) -> int:
    n = 1
    for s in shape[1:]:
        n *= s
    return n


class Reparam(nn.Module):
    """Wraps ``net``: its target weights are frozen and replaced, at every forward, by ``weights()``.

    Subclasses hold the trainable numbers (coefficients, factors) and implement ``weights()``.
    The wrapped net's other parameters (biases, normalisation) stay trainable: ``raw_parameters()``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.shapes = {n: tuple(p.shape) for n, p in target_weights(net).items()}
        for p in target_weights(net).values():
            p.requires_grad_(False)

    def weights(self) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return functional_call(self.net, self.weights(), (x,), strict=False)

    def stored_numbers(self) -> int:
        """Trainable numbers that stand for the target weights (biases excluded)."""
        raise NotImplementedError  # pragma: no cover

    def raw_parameters(self) -> list[nn.Parameter]:
        """The wrapped net's trainable parameters that are not reparameterised (biases, BatchNorm)."""
        return [p for p in self.net.parameters() if p.requires_grad]

    def method_parameters(self) -> list[nn.Parameter]:
        """The method's own trainable numbers (coefficients, factors)."""
        raw = {id(p) for p in self.raw_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in raw]


ParamSpec = Sequence[nn.Parameter] | Sequence[dict]


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    steps: int,
    seed: int,
    batch: int = 128,
    params: ParamSpec | None = None,
    after_step: Callable[[], None] | None = None,
    loss_window: float = 0.05,
) -> dict:
    """Adam + cosine decay to 0 over ``steps`` minibatches (sampled with replacement, seeded).

    ``params``: parameters or Adam param groups (each group anneals from its own lr); default:
    every parameter that requires grad, at ``lr``. Returns ``seconds`` (the loop only) and
    ``train_loss``: the mean minibatch loss over the last ``loss_window`` of the steps.
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(list(params), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    tail = max(1, round(steps * loss_window))
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
        if step >= steps - tail:
            losses.append(loss.detach().item())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "train_loss": sum(losses) / len(losses), "steps": steps}


def train(
    model: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    *,
    lr: float,
    steps: int,
    seed: int,
    batch: int = 128,
    params: ParamSpec | None = None,
    after_step: Callable[[], None] | None = None,
) -> float:
    """:func:`fit` on ``data[:2]``, then the accuracy on ``data[2:]`` (kept for older callers)."""
    x, y, xt, yt = data
    fit(model, x, y, lr=lr, steps=steps, seed=seed, batch=batch, params=params, after_step=after_step)
    return accuracy(model, xt, yt)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 4096) -> float:
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / x.shape[0]
