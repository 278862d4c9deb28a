"""The layout manifest: every output tensor of a bundle and where its numbers come from."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mcnc_core.errors import BundleLimitError, DuplicateTensorError, ManifestError
from mcnc_core.safetensors_io import DTYPE_TO_TORCH, ITEMSIZE, TORCH_TO_DTYPE

__all__ = [
    "BaseRef",
    "Storage",
    "TensorEntry",
    "decode_bytes",
    "factor_params",
    "factor_shapes",
    "manifest_from_json",
    "manifest_to_json",
]

Storage = Literal["mcnc", "raw", "base"]
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def factor_shapes(shape: Sequence[int], rank: int) -> tuple[tuple[int, ...], ...]:
    """Shapes generated for a tensor: itself when ``rank == 0``, else ``(rows, r)`` and ``(r, cols)``
    with ``rows = shape[0]`` and ``cols = prod(shape[1:])`` (conv kernels are flattened)."""
    if rank == 0:
        return (tuple(shape),)
    rows, cols = shape[0], math.prod(shape[1:])
    return ((rows, rank), (rank, cols))


def factor_params(shape: Sequence[int], rank: int) -> int:
    """Numbers a decode generates for a tensor: ``numel`` at rank 0, else ``(rows + cols) * rank``."""
    return sum(math.prod(f) for f in factor_shapes(shape, rank))


@dataclass(frozen=True)
class TensorEntry:
    """One output tensor.

    ``storage``: ``"mcnc"`` generated from codes ``[chunk_offset, chunk_offset + chunks)`` (added
    to the base tensor in delta mode); ``"raw"`` stored as ``raw.<name>``; ``"base"`` copied
    unchanged from the base (delta mode).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: Storage
    rank: int = 0
    chunk_offset: int = 0
    chunks: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def factors(self) -> tuple[tuple[int, ...], ...]:
        return factor_shapes(self.shape, self.rank)

    @property
    def factor_params(self) -> int:
        """Numbers the decode generates: ``numel`` at rank 0, ``(rows + cols) * rank`` for factors
        (0 for tensors that are not generated)."""
        return factor_params(self.shape, self.rank) if self.storage == "mcnc" else 0

    def chunks_needed(self, chunk_size: int) -> int:
        return sum(-(-math.prod(f) // chunk_size) for f in self.factors())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "storage": self.storage,
        }
        if self.storage == "mcnc":
            out.update(rank=self.rank, chunk_offset=self.chunk_offset, chunks=self.chunks)
        return out


@dataclass(frozen=True)
class BaseRef:
    """A delta bundle's base: a human name and the ``state_digest`` of the tensors it reads."""

    name: str | None
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: Any) -> BaseRef:
        if not isinstance(data, dict) or set(data) != {"name", "sha256"}:
            raise ManifestError(f"base must be an object with exactly name and sha256, got {data!r}")
        name, digest = data["name"], data["sha256"]
        if name is not None and not isinstance(name, str):
            raise ManifestError(f"base name must be a string or null, got {name!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ManifestError(f"base sha256 must be 64 lowercase hex digits, got {digest!r}")
        return cls(name, digest)


_F32 = 4


def decode_bytes(entry: TensorEntry, dtype: Any = None, *, chunk_size: int | None = None, delta: bool = False) -> int:
    """Bytes that decoding ``entry`` allocates at its peak (``mcnc_core.reconstruct``), output included.

    What is counted, by storage (sizes from the manifest alone, nothing allocated):

    - every tensor: its output, ``numel * itemsize`` of the output dtype (``dtype``: a
      ``torch.dtype`` or a safetensors code such as ``"F16"``, applies to floating tensors;
      ``None``: the tensor's own);
    - ``mcnc`` at rank 0: a float32 scratch when the output is not float32 (the fingerprint is
      checked on float32 values before the cast);
    - ``mcnc`` at rank ``r > 0``: the generated factors twice (``(rows + cols) * r`` float32 numbers,
      rounded up to whole chunks when ``chunk_size`` is given: the decoded blocks and their
      concatenation live together), their float32 product ``A @ B``, and in delta mode the float32
      sum with the base;
    - delta mode (``delta=True``) ``mcnc`` and ``base`` entries: the base tensor as read.

    The decoding blocks themselves (a few MiB per worker) are not counted.
    """
    if dtype is not None and not isinstance(dtype, str):
        dtype = TORCH_TO_DTYPE[dtype]
    own = ITEMSIZE[entry.dtype]
    out_item = ITEMSIZE[dtype] if dtype is not None and entry.dtype in FLOAT_DTYPES else own
    total = entry.numel * out_item
    if entry.storage == "base" or (delta and entry.storage == "mcnc"):
        total += entry.numel * own  # the base tensor, read from the base file
    if entry.storage != "mcnc":
        return total
    if entry.rank == 0:
        return total + (entry.numel * _F32 if out_item != _F32 or own != _F32 else 0)
    generated = entry.chunks * chunk_size if chunk_size is not None else entry.factor_params
    total += 2 * generated * _F32  # blocks + their concatenation (decode.decode_factors)
    total += entry.numel * _F32  # A @ B
    if delta:
        total += entry.numel * _F32  # base + A @ B
    return total


def manifest_to_json(entries: Sequence[TensorEntry]) -> list[dict[str, Any]]:
    return [e.to_json() for e in entries]


def _int(entry: str, key: str, v: Any, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ManifestError(f"manifest entry {entry!r}: {key} must be an int in [{lo}, {hi}], got {v!r}")
    return v


def manifest_from_json(
    data: Any,
    *,
    mode: str,
    chunk_size: int,
    max_params: int,
    max_tensor_params: int,
    max_factor_params: int | None = None,
) -> tuple[TensorEntry, ...]:
    """Parse and validate a manifest without allocating anything proportional to its sizes.

    Checks: entry fields and types; unique names; dtypes (``mcnc`` entries are floating point);
    declared sizes within ``max_tensor_params`` each and ``max_params`` in all; the numbers a tensor's
    decode generates (``(rows + cols) * rank`` for low-rank factors) within ``max_factor_params``
    (default: ``max_tensor_params``); ``rank`` only on
    tensors of >= 2 dims; each ``mcnc`` entry's ``chunks`` equals what its factors need at
    ``chunk_size``; chunk ranges contiguous from 0 in manifest order; ``base`` only in delta mode.

    Raises:
        ManifestError, DuplicateTensorError, BundleLimitError: naming the entry and value.
    """
    if not isinstance(data, list) or not data:
        raise ManifestError("manifest must be a non-empty JSON list")
    max_factor_params = max_tensor_params if max_factor_params is None else max_factor_params
    entries: list[TensorEntry] = []
    seen: set[str] = set()
    total = 0
    next_chunk = 0
    for raw in data:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise ManifestError(f"manifest entry must be an object with a non-empty name, got {raw!r}")
        name = raw["name"]
        if name in seen:
            raise DuplicateTensorError(f"manifest names tensor {name!r} twice")
        seen.add(name)
        storage = raw.get("storage")
        allowed = {"name", "shape", "dtype", "storage"} | (
            {"rank", "chunk_offset", "chunks"} if storage == "mcnc" else set()
        )
        if storage not in ("mcnc", "raw", "base"):
            raise ManifestError(f"manifest entry {name!r}: storage must be mcnc, raw or base, got {storage!r}")
        if set(raw) != allowed:
            raise ManifestError(f"manifest entry {name!r}: keys must be {sorted(allowed)}, got {sorted(raw)}")
        if storage == "base" and mode != "delta":
            raise ManifestError(f"manifest entry {name!r}: storage 'base' is only valid in delta bundles")
        shape = raw["shape"]
        if not isinstance(shape, list) or len(shape) > 8:
            raise ManifestError(f"manifest entry {name!r}: shape must be a list of at most 8 ints, got {shape!r}")
        shape_t = tuple(_int(name, "shape", d, 0, 2**40) for d in shape)
        numel = math.prod(shape_t)
        if numel > max_tensor_params:
            raise BundleLimitError(
                f"tensor {name!r} declares {numel} parameters, over the limit of {max_tensor_params}"
            )
        total += numel
        if total > max_params:
            raise BundleLimitError(f"manifest declares more than {max_params} parameters (limit) at tensor {name!r}")
        dtype = raw["dtype"]
        if dtype not in DTYPE_TO_TORCH:
            raise ManifestError(f"manifest entry {name!r}: unsupported dtype {dtype!r}")
        if storage != "mcnc":
            entries.append(TensorEntry(name, shape_t, dtype, storage))
            continue
        if dtype not in FLOAT_DTYPES:
            raise ManifestError(f"manifest entry {name!r}: compressed tensors must be floating point, got {dtype}")
        if numel == 0:
            raise ManifestError(f"manifest entry {name!r}: a compressed tensor cannot be empty")
        rank = _int(name, "rank", raw["rank"], 0, 4096)
        if rank and len(shape_t) < 2:
            raise ManifestError(
                f"manifest entry {name!r}: rank {rank} needs a tensor of >= 2 dims, shape {list(shape_t)}"
            )
        generated = factor_params(shape_t, rank)
        if generated > max_factor_params:
            raise BundleLimitError(
                f"tensor {name!r} of shape {list(shape_t)} at rank {rank} decodes {generated} factor numbers "
                f"((rows + cols) * rank), over the limit of {max_factor_params} (ReadLimits.max_factor_params)"
            )
        entry = TensorEntry(
            name,
            shape_t,
            dtype,
            "mcnc",
            rank,
            _int(name, "chunk_offset", raw["chunk_offset"], 0, 2**53),
            _int(name, "chunks", raw["chunks"], 1, 2**53),
        )
        if entry.chunk_offset != next_chunk:
            raise ManifestError(
                f"manifest entry {name!r}: chunk_offset {entry.chunk_offset}, expected {next_chunk} "
                "(chunk ranges must be contiguous in manifest order)"
            )
        needed = entry.chunks_needed(chunk_size)
        if entry.chunks != needed:
            raise ManifestError(
                f"manifest entry {name!r}: declares {entry.chunks} chunks, shape {list(shape_t)} "
                f"at rank {rank} and chunk_size {chunk_size} needs {needed}"
            )
        next_chunk += entry.chunks
        entries.append(entry)
    if next_chunk == 0:
        raise ManifestError("manifest has no compressed (mcnc) tensor")
    return tuple(entries)
