"""The frozen MCNC generator ``phi``: spec, seeded weights, and the chunk decoder.

``phi(alpha) = y / ||y||`` with ``y = W_out · s_depth``, ``s_1 = sin(W_1 alpha + b_1)`` and
``s_i = sin(W_i s_{i-1} + b_i)``: a sine MLP ``k -> width (x depth) -> chunk_size`` whose
output is L2-normalised onto the unit sphere. A chunk of weights is ``beta * phi(alpha)``.

Initialisation rules (all draws from ``mcnc_core.prng``, row-major ``(out, in)``, tensor ``j`` of
``[W_1, b_1, ..., W_depth, b_depth, W_out]`` on stream ``j``); the two versions differ only in ``W_1``:

* version 1, ``"siren-uniform-v1"``: ``W_1 ~ U(-1/k, 1/k)``. ``L`` does not enter the generator; it
  only set the initial code range ``[-L, L]`` (SIREN's first layer with ``omega_0 = L`` at init), so
  under Adam ``(L, lr)`` and ``(c*L, c*lr)`` trained identically (read forever, no longer written
  by default);
* version 2, ``"siren-frequency-v2"``: ``W_1 ~ U(-L/k, L/k)``: ``L`` is SIREN's ``omega_0``, a true
  frequency of the generator, and codes start in a fixed range (``[-1, 1]``), so the code learning
  rate does not depend on ``L``;
* both: ``W_i ~ U(-sqrt(6/width), sqrt(6/width))`` for ``i > 1`` and ``W_out`` likewise;
  ``b_i ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; ``W_out`` has no bias.

Numerics (why the decoder looks the way it does): the normalisation and ``beta`` are folded
into the small hidden vector using the Gram matrix ``G = W_outᵀ W_out`` (``||W_out s||² = sᵀ G s``),
so the only pass over the output is the final float32 GEMM, which writes each weight once. All
arithmetic is float32; bit-exactness on one device (training vs reconstruction, any thread count)
comes from ``mcnc_core.decode`` giving both paths identical, row-padded shapes, and agreement
across devices from the fingerprint tolerance (``docs/bundle-format.md`` §7).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import cachetools
import numpy as np
import torch
from torch import Tensor, nn

from mcnc_core import prng
from mcnc_core.errors import ConfigError

__all__ = [
    "GENERATOR_FAMILY",
    "GENERATOR_VERSION",
    "INIT_RULES",
    "Generator",
    "GeneratorSpec",
    "build_generator_weights",
    "generator_sha256",
    "generator_weights",
    "verified_generator_sha256",
]

GENERATOR_FAMILY = "mcnc-sine-mlp"
#: Initialisation rule of each generator version this library reads (and can write).
INIT_RULES = {1: "siren-uniform-v1", 2: "siren-frequency-v2"}
GENERATOR_VERSION = 2  # the newest version, what ``MCNCConfig()`` writes
INIT_RULE = INIT_RULES[1]  # ``GeneratorSpec``'s own defaults stay version 1 (existing callers)
PRNG_NAME = "philox4x32-10"


@dataclass(frozen=True)
class GeneratorSpec:
    """Versioned description of a generator; together with the seed it fixes ``phi`` exactly.

    ``version`` selects the initialisation rule (``INIT_RULES``); ``init`` must name that rule.
    The field defaults are version 1 (what this class always built); ``MCNCConfig`` passes
    version 2 for new models.

    Raises:
        ConfigError: if a field is out of range (k in [1, 1024], chunk_size in [2, 2**20],
            width in [1, 8192], depth in [1, 8], bound finite in (0, 1e4], seed in [0, 2**64)),
            or family, version, init or prng is not one this library implements.
    """

    k: int
    chunk_size: int
    width: int
    depth: int
    bound: float
    seed: int
    family: str = GENERATOR_FAMILY
    version: int = 1
    init: str = INIT_RULE
    prng: str = PRNG_NAME

    def __post_init__(self) -> None:
        def check_int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")

        check_int("k", 1, 1024)
        check_int("chunk_size", 2, 2**20)
        check_int("width", 1, 8192)
        check_int("depth", 1, 8)
        check_int("seed", 0, 2**64 - 1)
        b = self.bound
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not (math.isfinite(b) and 0 < b <= 1e4):
            raise ConfigError(f"bound must be a finite number in (0, 10000], got {b!r}")
        object.__setattr__(self, "bound", float(b))
        if type(self.version) is not int or self.version not in INIT_RULES:
            raise ConfigError(
                f"generator version {self.version!r} is not supported (this library reads {sorted(INIT_RULES)})"
            )
        fixed = {"family": GENERATOR_FAMILY, "init": INIT_RULES[self.version], "prng": PRNG_NAME}
        for name, expected in fixed.items():
            if getattr(self, name) != expected:
                raise ConfigError(f"generator {name} {getattr(self, name)!r} is not supported (expected {expected!r})")

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of ``[W_1, b_1, ..., W_depth, b_depth, W_out]`` in PRNG stream order."""
        shapes: list[tuple[int, ...]] = []
        fan_in = self.k
        for _ in range(self.depth):
            shapes += [(self.width, fan_in), (self.width,)]
            fan_in = self.width
        return [*shapes, (self.chunk_size, self.width)]

    @property
    def numel(self) -> int:
        """Numbers in the generator's weights (what building it draws and holds, float32 each)."""
        return sum(math.prod(s) for s in self.shapes)

    @property
    def gram_macs(self) -> int:
        """Multiply-adds of its Gram matrix ``W_outᵀ W_out`` (``width² · chunk_size``), built once."""
        return self.width * self.width * self.chunk_size

    @property
    def flops_per_chunk(self) -> int:
        """Multiply-adds x 2 to decode one chunk (hidden layers + output GEMM)."""
        hidden = self.k * self.width + (self.depth - 1) * self.width * self.width
        return 2 * (hidden + self.width + self.width * self.chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> GeneratorSpec:
        """Strict: every field required, no unknown key (a bundle must say exactly what it means)."""
        if not isinstance(data, dict):
            raise ConfigError(f"generator spec must be a JSON object, got {type(data).__name__}")
        names = set(cls.__dataclass_fields__)
        if set(data) != names:
            missing, extra = sorted(names - set(data)), sorted(set(data) - names)
            raise ConfigError(f"generator spec keys differ: missing {missing}, unexpected {extra}")
        return cls(**data)


# Generator weights and Gram matrices, shared by every reader in the process, bounded in bytes
# (not in entries: one spec may be a thousand times larger than another). Only generators whose
# sha256 a bundle has confirmed, or that a trusted caller (compress) asked for, are kept.
CACHE_BYTES = 512 << 20
_CACHE: cachetools.LRUCache[tuple[str, GeneratorSpec], Any] = cachetools.LRUCache(
    CACHE_BYTES, getsizeof=lambda v: sum(a.nbytes for a in v) if isinstance(v, tuple) else v.nbytes
)
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple[str, GeneratorSpec], build: Callable[[], Any]) -> Any:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    value = build()
    with _CACHE_LOCK:
        if _CACHE.getsizeof(value) <= _CACHE.maxsize:  # larger than the whole cache: used once, not kept
            _CACHE[key] = value
    return value


def build_generator_weights(spec: GeneratorSpec) -> tuple[np.ndarray, ...]:
    """The generator's float32 weights, computed now and not cached (read-only arrays).

    Returns:
        ``(W_1, b_1, ..., W_depth, b_depth, W_out)`` with the shapes of ``spec.shapes``.
    """
    out = []
    for stream, shape in enumerate(spec.shapes):
        is_bias = len(shape) == 1
        fan_in = spec.k if stream == 0 else spec.width
        if is_bias:
            bound = 1.0 / math.sqrt(fan_in)
        elif stream == 0:
            # v2: L scales the first layer (one correctly rounded float64 division, as the PRNG spec requires).
            bound = spec.bound / spec.k if spec.version == 2 else 1.0 / spec.k
        else:
            bound = math.sqrt(6.0 / spec.width)
        arr = prng.uniform_symmetric(spec.seed, stream, math.prod(shape), bound).reshape(shape)
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


def generator_weights(spec: GeneratorSpec) -> tuple[np.ndarray, ...]:
    """``build_generator_weights(spec)``, bit-identical everywhere, from a byte-bounded cache."""
    return _cached(("weights", spec), lambda: build_generator_weights(spec))


def weights_sha256(weights: tuple[np.ndarray, ...]) -> str:
    """sha256 over float32 little-endian weight bytes, in stream order."""
    h = hashlib.sha256()
    for arr in weights:
        h.update(arr.astype("<f4").tobytes())
    return h.hexdigest()


def generator_sha256(spec: GeneratorSpec) -> str:
    """sha256 over the generator's float32 little-endian weight bytes, in stream order."""
    return weights_sha256(generator_weights(spec))


def verified_generator_sha256(spec: GeneratorSpec, expected: str) -> str:
    """The generator's sha256, caching its weights only if it equals ``expected``.

    A reader checks an untrusted bundle's generator with this: a spec whose hash does not match
    costs its computation once and leaves nothing behind in memory.
    """
    with _CACHE_LOCK:
        hit = _CACHE.get(("weights", spec))
    if hit is not None:
        return weights_sha256(hit)
    weights = build_generator_weights(spec)
    sha = weights_sha256(weights)
    if sha == expected:
        _cached(("weights", spec), lambda: weights)
    return sha


def keep_dtype(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Wrap a ``Module._apply`` function so it may move tensors between devices but never
    change their dtype (converting and converting back would lose precision)."""

    def apply(t: Tensor) -> Tensor:
        out = fn(t)
        return out if out.dtype == t.dtype else t.to(out.device)

    return apply


def _gram64(spec: GeneratorSpec) -> np.ndarray:
    def build() -> np.ndarray:
        # einsum without BLAS: one fixed summation order, independent of threads and libraries.
        w_out = generator_weights(spec)[-1].astype(np.float64)
        g = np.einsum("ij,ik->jk", w_out, w_out, optimize=False)
        g.setflags(write=False)
        return g

    return _cached(("gram", spec), build)


_TINY = 1e-30  # ||y||² floor (float32-safe): a zero direction gives a zero chunk, not NaN


def _onednn_linear_available() -> bool:
    # torch's own oneDNN (MKL-DNN) linear primitive, the one inductor uses on CPU. Absent from
    # builds without oneDNN: those use torch.matmul (same bits on any one machine; machines agree
    # within the fingerprint tolerance either way).
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w = torch.ones(16, 4), torch.ones(8, 4)
        return bool(torch.equal(op(x, w, None, "none", [], ""), x @ w.t()))
    except (RuntimeError, NotImplementedError):
        return False


_ONEDNN_LINEAR = _onednn_linear_available()
_SLICE_ELEMS = 1 << 18  # output elements per GEMM call (1 MiB of float32)


def _cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...); empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


try:  # the project's own kernels (mcnc_core/_kernels.c, built when a C compiler is there)
    from mcnc_core import _kernels
except ImportError:  # pragma: no cover - a build without it uses torch's GEMMs
    _kernels = None  # type: ignore[assignment]


def _cpu_gemm() -> str | None:
    """The output GEMM's kernel on this machine's CPU, fixed per machine: training and reconstruction
    must call the same one to get the same bits.

    ``"native"`` (``mcnc_core._kernels.gemm``) on CPUs with AVX-512F: each output element one
    sequential fma chain over the hidden width, so its bits never depend on the block, slice or
    thread; it writes straight into the output with streaming stores, with no copy after it
    (decode 1.6 -> ~2 Gparam/s on the 2-core Xeon this project measures on, docs/benchmarks.md).
    ``"mkl"`` (``torch.mm``) on other Intel CPUs: as fast as oneDNN's there (211-227 GFLOP/s on one core of
    the Xeon this project measures on) and it writes into a buffer it is given, so reconstruction
    reuses one cache-resident slice instead of allocating one per call (+25% decode speed, measured).
    ``"onednn"`` elsewhere: MKL's float32 GEMM is 2.1-2.5x slower than oneDNN's on AMD (Zen 5:
    84-99 vs 205-210 GFLOP/s). ``None``: neither, one plain matmul.
    """
    if _kernels is not None and _kernels.gemm_available():
        return "native"
    if _cpu_vendor() == "GenuineIntel":
        return "mkl"
    return "onednn" if _ONEDNN_LINEAR else None


_CPU_GEMM = _cpu_gemm()


def cpu_gemm_kernel() -> str:
    """The output GEMM this process uses on CPU: ``native``, ``mkl``, ``onednn`` or ``matmul``.

    Part of what decides a CPU reconstruction's last bits (servers put it in their numerics profile).
    """
    return _CPU_GEMM or "matmul"


def _differentiable(hs: Tensor) -> bool:
    """Whether ``hs`` may carry a derivative: backward mode (grad enabled and it requires grad) or
    forward mode (a dual level is open; torch keeps that level in ``forward_ad._current_level``)."""
    if torch.is_grad_enabled() and hs.requires_grad:
        return True
    return getattr(torch.autograd.forward_ad, "_current_level", 0) >= 0


# ``_kernels.gemm``'s out_kind per output dtype (mcnc_core/_kernels.c).
_OUT_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _gemm(hs: Tensor, w_out: Tensor, w_out_t: Tensor, out: Tensor | None = None, *, stream: bool = False) -> Tensor:
    """``hs @ W_outᵀ`` with this machine's CPU kernel (``_CPU_GEMM``); ``out`` (rows contiguous) with
    the native kernel or MKL; ``stream``: the native kernel writes ``out`` with streaming stores."""
    if _CPU_GEMM == "native":
        hs = hs.contiguous()
        if out is None:
            out = torch.empty(hs.shape[0], w_out_t.shape[1])
        assert out.stride(1) == 1 and out.shape == (hs.shape[0], w_out_t.shape[1]) and w_out_t.is_contiguous()
        m, k = hs.shape
        kind = _OUT_KINDS[out.dtype]  # a half-precision ``out`` is rounded in the kernel (torch's rounding)
        _kernels.gemm(
            hs.data_ptr(), w_out_t.data_ptr(), out.data_ptr(), m, k, out.shape[1], k, out.stride(0), stream, kind
        )
        return out
    if _CPU_GEMM == "mkl":
        return torch.mm(hs, w_out_t, out=out) if out is not None else torch.mm(hs, w_out_t)
    return torch.ops.mkldnn._linear_pointwise(hs, w_out, None, "none", [], "")


class _OutputGemm(torch.autograd.Function):
    """``hs @ W_outᵀ`` on CPU through this machine's GEMM kernel (``_cpu_gemm``). Training's forward
    and reconstruction call the same kernel on the same shapes and operands, so they keep giving
    identical bits; the backward (``grad @ W_out``) and forward-mode derivative are ordinary
    matmuls."""

    @staticmethod
    def forward(hs: Tensor, w_out: Tensor, w_out_t: Tensor) -> Tensor:  # type: ignore[override]
        return _gemm(hs, w_out, w_out_t)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[no-untyped-def, override]
        (w_out,) = ctx.saved_tensors
        return grad @ w_out, None, None

    @staticmethod
    def jvp(ctx, hs_t: Tensor, _w_t: Tensor | None, _wt_t: Tensor | None) -> Tensor:  # type: ignore[no-untyped-def, override]
        (w_out,) = ctx.saved_tensors
        return hs_t @ w_out.t()


class Generator(nn.Module):
    """``phi`` as a frozen module; weights live in non-persistent buffers (never in a state_dict).

    One instance is shared by every compressed tensor of a model; ``model.to(device)`` moves it.
    """

    def __init__(self, spec: GeneratorSpec) -> None:
        super().__init__()
        self.spec = spec
        weights = generator_weights(spec)
        for i in range(spec.depth):
            w, b = weights[2 * i], weights[2 * i + 1]
            self.register_buffer(f"w{i}", torch.from_numpy(np.array(w)), persistent=False)
            self.register_buffer(f"b{i}", torch.from_numpy(np.array(b)), persistent=False)
        w_out = torch.from_numpy(np.array(weights[-1]))  # (d, width) float32
        self.register_buffer("w_out", w_out, persistent=False)  # oneDNN's (out, in) weight layout
        self.register_buffer("w_out_t", w_out.t().contiguous(), persistent=False)  # (width, d) for matmul
        # G is summed in float64 in one fixed order (see _gram64), then rounded once.
        self.register_buffer("gram", torch.from_numpy(_gram64(spec).astype(np.float32)), persistent=False)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # model.half() / .double() must not touch the generator: its dtypes are part of the spec.
        return super()._apply(keep_dtype(fn), recurse)

    def extra_repr(self) -> str:
        s = self.spec
        return f"k={s.k}, width={s.width}, depth={s.depth}, chunk_size={s.chunk_size}, bound={s.bound}, seed={s.seed}"

    def scaled_hidden(self, alpha: Tensor, beta: Tensor) -> Tensor:
        """Hidden activations pre-scaled so that ``out @ w_out_t == beta * phi(alpha)``.

        Args:
            alpha: ``(n, k)`` float32 codes.
            beta: ``(n,)`` float32 scales.

        Returns:
            ``(n, width)`` float32.
        """
        x = alpha
        if torch.is_grad_enabled() and (alpha.requires_grad or beta.requires_grad):
            for i in range(self.spec.depth):
                x = torch.sin(torch.addmm(getattr(self, f"b{i}"), x, getattr(self, f"w{i}").t()))  # (n, width)
            sq_norm = ((x @ self.gram) * x).sum(dim=1)  # (n,) = ||W_out x||²
            return x * (beta * torch.rsqrt(sq_norm.clamp_min(_TINY)))[:, None]
        # No autograd (reconstruction): the same kernels in place, so the same bits with fewer
        # passes and allocations (tests/core/test_decode_paths.py checks both paths).
        for i in range(self.spec.depth):
            x = torch.addmm(getattr(self, f"b{i}"), x, getattr(self, f"w{i}").t()).sin_()
        sq_norm = (x @ self.gram).mul_(x).sum(dim=1)
        return x.mul_(beta.mul(sq_norm.clamp_min_(_TINY).rsqrt_())[:, None])

    def output_slices(self, hs: Tensor, *, reuse: bool = False) -> Iterator[tuple[int, Tensor]]:
        """The output layer, ``hs @ W_outᵀ``, as ``(first_row, (s, chunk_size) float32)`` slices.

        The one place the decode's big GEMM runs, for training and reconstruction alike (which is
        what keeps them bit-identical on one device). On CPU: this machine's GEMM kernel
        (``_cpu_gemm``) on slices of ~1 MiB of output, each small enough to stay in cache until the
        caller has used it; elsewhere one matmul. Reconstruction uses true float32 products.

        Args:
            reuse: the caller is done with each slice before it asks for the next: without
                autograd, MKL then writes every slice into the same cache-resident buffer.
        """
        if hs.device.type == "cpu" and _CPU_GEMM is not None and hs.dtype == torch.float32:
            step = max(16, (_SLICE_ELEMS // self.spec.chunk_size) // 16 * 16)
            if _differentiable(hs):
                for i in range(0, hs.shape[0], step):
                    yield i, _OutputGemm.apply(hs[i : i + step], self.w_out, self.w_out_t)
                return
            # Without autograd, the kernel itself (the Function's bookkeeping costs ~30 us a call).
            reusable = reuse and _CPU_GEMM in ("native", "mkl")
            buf = torch.empty(min(step, hs.shape[0]), self.spec.chunk_size) if reusable else None
            for i in range(0, hs.shape[0], step):
                part = hs[i : i + step]
                yield i, _gemm(part, self.w_out, self.w_out_t, None if buf is None else buf[: part.shape[0]])
        else:
            yield 0, hs @ self.w_out_t

    def output_into(self, hs: Tensor, out: Tensor) -> bool:
        """Write ``hs @ W_outᵀ`` straight into ``out`` (``(m, chunk_size)``, rows contiguous) with
        streaming stores, the same bits as ``output_slices`` (float32 ``out``) or as its result cast
        with ``.to(out.dtype)`` (float16/bfloat16 ``out``: rounded in the kernel, bit for bit as
        torch rounds); only with the native kernel on CPU (returns False, writing nothing,
        otherwise: use ``output_slices``)."""
        if (
            _CPU_GEMM != "native"
            or hs.device.type != "cpu"
            or hs.dtype != torch.float32
            or out.dtype not in _OUT_KINDS
            or _differentiable(hs)
        ):
            return False
        _gemm(hs, self.w_out, self.w_out_t, out, stream=True)
        return True

    def output(self, hs: Tensor) -> Tensor:
        """``hs @ W_outᵀ``: ``(m, width) -> (m, chunk_size)`` float32, differentiable (``output_slices``)."""
        parts = [part for _, part in self.output_slices(hs)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def decode(self, alpha: Tensor, beta: Tensor) -> Tensor:
        """``beta * phi(alpha)`` for every chunk: ``(n, k), (n,) -> (n, chunk_size)`` float32."""
        return self.output(self.scaled_hidden(alpha, beta))
