"""``ManifoldWeight``: the trainable codes of one compressed tensor, and the hooks that use them."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mcnc_core import prng
from mcnc_core.decode import decode_factors, decode_tensor
from mcnc_core.generator import Generator, keep_dtype
from mcnc_core.manifest import factor_shapes

__all__ = ["AdapterKind", "ManifoldWeight", "add_adapter_output", "adapter_kind", "regenerate_weights"]

PREFIX = "mcnc_"

#: How a delta on low-rank factors enters a module's output without building the full weight:
#: ``"linear"``: ``y += (x Bᵀ) Aᵀ`` (weight ``(out, in)``: ``nn.Linear`` and its subclasses);
#: ``"conv1d"``: ``y += (x A) B`` (GPT-2's ``Conv1D``, weight ``(in, out)``). The base layer's own
#: forward runs untouched, whatever it computes internally; but its ``weight`` must be the float
#: ``(out, in)`` tensor the bundle's manifest and base digest describe, so layers that store a
#: packed quantized weight (bitsandbytes' 4/8-bit) cannot be targets yet.
AdapterKind = Literal["linear", "conv1d"]


def adapter_kind(module: nn.Module, pname: str) -> AdapterKind | None:
    """The adapter form ``module.<pname>`` can train in, or ``None`` (then the full weight is rebuilt).

    Only a module's ``weight`` whose forward is ``x @ Wᵀ + b`` (``nn.Linear``) or ``x @ W + b``
    (``transformers``' ``Conv1D``, recognised by name and its ``nf`` attribute) qualifies.
    """
    if pname != "weight" or getattr(module.weight, "dim", lambda: 0)() != 2:
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and getattr(module, "nf", None) == module.weight.shape[1]:
        return "conv1d"
    return None


class ManifoldWeight(nn.Module):
    """Codes ``alpha (n, k)`` and scales ``beta (n,)`` generating one tensor through ``generator``.

    Three forms: full mode (``base`` None, ``adapter`` None) generates the weight; delta mode keeps
    the frozen base as a (persistent) buffer and generates the difference; adapter mode (delta on
    factors of a linear layer) leaves the base in the module itself and only adds ``x Bᵀ Aᵀ`` to its
    output (``adapter_output``), so a training step costs what the adapter costs, not the base.
    ``forward(base)`` returns the float32 weight of ``shape`` (``base + A @ B`` in adapter mode).
    """

    def __init__(
        self,
        generator: Generator,
        shape: tuple[int, ...],
        rank: int,
        base: Tensor | None,
        adapter: AdapterKind | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.shape = tuple(shape)
        self.rank = rank
        self.adapter = adapter
        self.factors = factor_shapes(shape, rank)
        d = generator.spec.chunk_size
        self.factor_chunks = [-(-math.prod(f) // d) for f in self.factors]
        n = sum(self.factor_chunks)
        device = generator.w_out_t.device
        self.alpha = nn.Parameter(torch.empty(n, generator.spec.k, device=device))
        self.beta = nn.Parameter(torch.empty(n, device=device))
        self.out_dtype = torch.float32  # dtype of the module's weight; follows model.half() etc.
        self.base: Tensor | None
        if base is not None:
            self.register_buffer("base", base.detach().clone())
        else:
            self.base = None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # Codes stay float32 and the base keeps its dtype under model.half() and friends; the
        # generated weight follows the conversion (out_dtype), like the parameter it replaced.
        self.out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        return super()._apply(keep_dtype(fn), recurse)

    def extra_repr(self) -> str:
        delta = self.base is not None or self.adapter is not None
        form = f", adapter={self.adapter}" if self.adapter else ""
        return f"shape={list(self.shape)}, rank={self.rank}, chunks={self.alpha.shape[0]}, delta={delta}{form}"

    @torch.no_grad()
    def reset_codes(self, target_rms: float, zero_last: bool, alpha_range: float, seed: int, stream: int) -> None:
        """Initialise codes: ``alpha ~ U(-alpha_range, alpha_range)`` from ``mcnc_core.prng``
        (``seed``, ``stream``: the same on every machine), and each factor's ``beta`` so the
        generated tensor has RMS ``target_rms`` (``||beta * phi|| = beta``, so a chunk of RMS ``r``
        needs ``beta = r*sqrt(d)``). With ``zero_last`` the last factor starts at ``beta = 0``
        (delta mode: start at the base)."""
        spec = self.generator.spec
        values = prng.uniform_symmetric(seed, stream, self.alpha.numel(), alpha_range)
        self.alpha.copy_(torch.from_numpy(values).reshape(self.alpha.shape))
        sqrt_d = math.sqrt(spec.chunk_size)
        if self.rank == 0:
            factor_rms = [target_rms]
        elif zero_last:  # delta: A of RMS 1/sqrt(r), B learns the scale (like LoRA's B = 0)
            factor_rms = [1.0 / math.sqrt(self.rank), 0.0]
        else:  # rms(A @ B) = sqrt(r) * rms(A) * rms(B)
            f = math.sqrt(target_rms / math.sqrt(self.rank))
            factor_rms = [f, f]
        if zero_last:
            factor_rms[-1] = 0.0
        start = 0
        for c, rms in zip(self.factor_chunks, factor_rms, strict=True):
            self.beta[start : start + c] = rms * sqrt_d
            start += c

    def forward(self, base: Tensor | None = None) -> Tensor:
        """The float32 weight; ``base`` is the module's own frozen weight in adapter mode."""
        base = self.base if self.base is not None else base
        return decode_tensor(self.generator, self.alpha, self.beta, self.shape, self.factors, base)

    def adapter_output(self, x: Tensor) -> Tensor:
        """``x Bᵀ Aᵀ`` (linear) or ``x A B`` (conv1d): what the delta adds to the module's output.

        ``x``: ``(..., in)`` of any floating dtype; the factors are cast to it (as peft does).
        """
        a, b = decode_factors(self.generator, self.alpha, self.beta, self.factors)
        if self.adapter == "linear":  # A: (out, r), B: (r, in)
            return F.linear(F.linear(x, b.to(x.dtype)), a.to(x.dtype))
        return (x @ a.to(x.dtype)) @ b.to(x.dtype)  # conv1d: A: (in, r), B: (r, out)


def _children(module: nn.Module) -> list[tuple[str, ManifoldWeight]]:
    return [(n, c) for n, c in module.named_children() if n.startswith(PREFIX) and isinstance(c, ManifoldWeight)]


def regenerate_weights(module: nn.Module, args: object = None) -> None:
    """Forward pre-hook: set each compressed parameter of ``module`` from its codes."""
    for child_name, child in _children(module):
        if child.adapter is None:
            w = child()
            setattr(module, child_name[len(PREFIX) :], w if w.dtype == child.out_dtype else w.to(child.out_dtype))


def add_adapter_output(module: nn.Module, args: tuple[object, ...], output: Tensor) -> Tensor:
    """Forward hook: add each adapter-mode child's ``adapter_output`` to the module's output."""
    x = args[0]
    assert isinstance(x, Tensor)
    for _, child in _children(module):
        if child.adapter is not None:
            output = output + child.adapter_output(x)
    return output
