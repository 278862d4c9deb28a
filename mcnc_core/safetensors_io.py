"""Deterministic safetensors writing and strict, bounded header parsing.

We write the container ourselves so a bundle's bytes depend only on this specification, not on
the ``safetensors`` package's writer (whose tensor order and padding could change): the header
is compact JSON, tensors in the order given, ``__metadata__`` first, padded with spaces to a
multiple of 8 bytes, data offsets contiguous from 0. Files remain ordinary safetensors files.
Parsing never trusts a declared size before checking it against the buffer and the limits.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mcnc_core.errors import BundleFormatError, BundleLimitError, DuplicateTensorError

__all__ = [
    "DTYPE_TO_TORCH",
    "TORCH_TO_DTYPE",
    "HeaderEntry",
    "build_header",
    "parse_header",
    "tensor_bytes",
]

DTYPE_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_DTYPE = {v: k for k, v in DTYPE_TO_TORCH.items()}
ITEMSIZE = {k: torch.empty(0, dtype=v).element_size() for k, v in DTYPE_TO_TORCH.items()}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("mcnc_core needs a little-endian platform (safetensors data is little-endian)")


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a safetensors header: name, dtype code (``"F32"``), shape, byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def build_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[HeaderEntry]]:
    """Serialise a header for tensors ``(name, dtype, shape)`` laid out in the given order.

    Returns:
        ``(prefix, entries)``: ``prefix`` is the 8-byte length plus the padded JSON header; the
        data section that follows is the tensors' bytes concatenated in order.
    """
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    entries: list[HeaderEntry] = []
    offset = 0
    for name, dtype, shape in tensors:
        if name in header:
            raise DuplicateTensorError(f"tensor name {name!r} appears twice")
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        entries.append(HeaderEntry(name, dtype, tuple(shape), offset, offset + nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, entries


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The little-endian bytes of a CPU tensor, contiguous, as safetensors stores them."""
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())  # 1-d first: 0-dim tensors too


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateTensorError(f"key {key!r} appears twice in the header")
        out[key] = value
    return out


def parse_header(
    buf: bytes | memoryview, *, max_header_bytes: int, max_numel: int
) -> tuple[dict[str, str], dict[str, HeaderEntry], int]:
    """Parse and check a safetensors header against the whole buffer.

    Checks: length prefix and header fit in ``buf``; JSON object without duplicate keys;
    string-to-string metadata; known dtypes; non-negative integer shapes; each tensor's byte
    range equals ``numel * itemsize``; ranges contiguous from 0 and ending exactly at the end of
    the buffer (no gaps, overlaps or trailing bytes).

    Returns:
        ``(metadata, entries by name in header order, data_start)``.

    Raises:
        BundleFormatError: truncated buffer, malformed JSON or entries, inconsistent offsets.
        BundleLimitError: header longer than ``max_header_bytes`` or a tensor over ``max_numel``.
        DuplicateTensorError: a key appears twice.
    """
    size = len(buf)
    if size < 8:
        raise BundleFormatError(f"truncated file: {size} bytes, a safetensors file has at least 8")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n > max_header_bytes:
        raise BundleLimitError(f"header declares {n} bytes, over the limit of {max_header_bytes}")
    if 8 + n > size:
        raise BundleFormatError(f"truncated file: header declares {n} bytes but only {size - 8} follow")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except DuplicateTensorError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleFormatError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise BundleFormatError(f"header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise BundleFormatError("__metadata__ must map strings to strings")
    entries: dict[str, HeaderEntry] = {}
    for name, info in header.items():
        entries[name] = _parse_entry(name, info, max_numel)
    data_size = size - 8 - n
    expected = 0
    for e in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != expected:
            raise BundleFormatError(f"tensor {e.name!r} starts at byte {e.begin}, expected {expected} (gap or overlap)")
        expected = e.end
    if expected != data_size:
        kind = "truncated file" if expected > data_size else "trailing bytes"
        raise BundleFormatError(f"{kind}: tensors cover {expected} data bytes, the file has {data_size}")
    return metadata, entries, 8 + n


def _parse_entry(name: str, info: Any, max_numel: int) -> HeaderEntry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise BundleFormatError(f"tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_TO_TORCH:
        raise BundleFormatError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape) or len(shape) > 8:
        raise BundleFormatError(f"tensor {name!r}: shape must be a list of at most 8 ints >= 0, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)):
        raise BundleFormatError(f"tensor {name!r}: data_offsets must be two ints >= 0, got {offsets!r}")
    numel = math.prod(shape)
    if numel > max_numel:
        raise BundleLimitError(f"tensor {name!r} declares {numel} elements, over the limit of {max_numel}")
    begin, end = offsets
    if end - begin != numel * ITEMSIZE[dtype]:
        raise BundleFormatError(
            f"tensor {name!r}: data_offsets span {end - begin} bytes, shape {shape} of {dtype} needs "
            f"{numel * ITEMSIZE[dtype]}"
        )
    return HeaderEntry(name, dtype, tuple(shape), begin, end)


def _is_index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53
