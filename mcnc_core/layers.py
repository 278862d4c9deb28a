"""``ManifoldWeight``: the trainable codes of one compressed tensor, and the hook that uses them."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mcnc_core.decode import decode_tensor
from mcnc_core.generator import Generator, keep_dtype
from mcnc_core.manifest import factor_shapes

__all__ = ["ManifoldWeight", "regenerate_weights"]

PREFIX = "mcnc_"


class ManifoldWeight(nn.Module):
    """Codes ``alpha (n, k)`` and scales ``beta (n,)`` generating one tensor through ``generator``.

    In delta mode the frozen base tensor is a (persistent) buffer and the codes generate the
    difference. ``forward()`` returns the float32 weight of ``shape``.
    """

    def __init__(self, generator: Generator, shape: tuple[int, ...], rank: int, base: Tensor | None) -> None:
        super().__init__()
        self.generator = generator
        self.shape = tuple(shape)
        self.rank = rank
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
        return (
            f"shape={list(self.shape)}, rank={self.rank}, chunks={self.alpha.shape[0]}, delta={self.base is not None}"
        )

    @torch.no_grad()
    def reset_codes(self, target_rms: float, zero_last: bool, alpha_init: float) -> None:
        """Initialise codes: ``alpha ~ U(-a*L, a*L)`` (torch's global RNG; training need not be
        portable, only the bundle is) and each factor's ``beta`` so the generated tensor has RMS
        ``target_rms`` (``||beta * phi|| = beta``, so a chunk of RMS ``r`` needs ``beta = r*sqrt(d)``).
        With ``zero_last`` the last factor starts at ``beta = 0`` (delta mode: start at the base)."""
        spec = self.generator.spec
        lim = alpha_init * spec.bound
        self.alpha.uniform_(-lim, lim)
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

    def forward(self) -> Tensor:
        return decode_tensor(self.generator, self.alpha, self.beta, self.shape, self.factors, self.base)


def regenerate_weights(module: nn.Module, args: object = None) -> None:
    """Forward pre-hook: set each compressed parameter of ``module`` from its codes."""
    for child_name, child in module.named_children():
        if child_name.startswith(PREFIX) and isinstance(child, ManifoldWeight):
            w = child()
            setattr(module, child_name[len(PREFIX) :], w if w.dtype == child.out_dtype else w.to(child.out_dtype))
