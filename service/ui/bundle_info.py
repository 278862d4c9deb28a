"""What a model page shows of a bundle's configuration, read from its safetensors header only.

A page needs k, d (chunk size), rank, the generator version, the targets and the tensor counts:
all of them sit in the header's ``__metadata__`` (``docs/bundle-format.md``). Reading the header
costs two ranged reads of the blob (the 8-byte length, then the JSON), never the tensors and never
torch. Stored bundles were validated on upload, so this reader only bounds what it allocates.
Summaries are immutable per digest and kept in a small LRU.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from service.storage import Store

__all__ = ["MAX_HEADER_BYTES", "BundleSummary", "bundle_summary"]

MAX_HEADER_BYTES = 32 << 20  # mcnc_core.ReadLimits.max_header_bytes: no stored bundle has a larger one
_CACHE: LRUCache[str, BundleSummary] = LRUCache(maxsize=512)
_LOCK = threading.Lock()


@dataclass(frozen=True)
class BundleSummary:
    """The configuration facts of one bundle (``None`` where its header does not say)."""

    format_version: str | None
    mode: str | None
    k: int | None
    chunk_size: int | None
    width: int | None
    depth: int | None
    seed: int | None
    generator_version: int
    rank: int | None
    targets: tuple[str, ...] | None  # None: the default (every Linear/Conv/Embedding weight)
    exclude: tuple[str, ...] | None
    tensors: int
    compressed: int  # manifest entries generated from codes
    raw: int  # stored verbatim
    from_base: int  # copied from the base (delta mode)
    base_name: str | None
    base_sha256: str | None


def _read(store: Store, digest: str, start: int, end: int) -> bytes:
    reader = store.open_bundle(digest, start, end)
    try:
        return b"".join(reader)
    finally:
        reader.close()


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _patterns(value: Any) -> tuple[str, ...] | None:
    return tuple(str(v) for v in value) if isinstance(value, list) else None


def _json(meta: dict[str, Any], key: str) -> Any:
    try:
        return json.loads(meta[key]) if isinstance(meta.get(key), str) else None
    except ValueError:
        return None


def parse_summary(header: dict[str, Any]) -> BundleSummary:
    """The summary of a parsed safetensors header (the JSON object after the length prefix)."""
    meta = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    config = _json(meta, "config") or {}
    generator = _json(meta, "generator") or {}
    manifest = _json(meta, "manifest") or []
    base = _json(meta, "base") or {}
    storage = [e.get("storage") for e in manifest if isinstance(e, dict)]
    rank = meta.get("rank")
    return BundleSummary(
        format_version=meta.get("format_version"),
        mode=meta.get("mode"),
        k=_int(generator.get("k", config.get("k"))),
        chunk_size=_int(generator.get("chunk_size", config.get("chunk_size"))),
        width=_int(generator.get("width", config.get("width"))),
        depth=_int(generator.get("depth", config.get("depth"))),
        seed=_int(generator.get("seed", config.get("seed"))),
        # The spec's own version; a config without the key was written before version 2 existed (1).
        generator_version=_int(generator.get("version")) or _int(config.get("generator_version")) or 1,
        rank=int(rank) if isinstance(rank, str) and rank.isdigit() else None,
        targets=_patterns(config.get("targets")),
        exclude=_patterns(config.get("exclude")),
        tensors=len(storage),
        compressed=storage.count("mcnc"),
        raw=storage.count("raw"),
        from_base=storage.count("base"),
        base_name=base.get("name") if isinstance(base, dict) else None,
        base_sha256=base.get("sha256") if isinstance(base, dict) else None,
    )


def bundle_summary(store: Store, digest: str, size: int) -> BundleSummary | None:
    """The summary of stored bundle ``digest`` (``size`` bytes), or None if its header is unreadable.

    Raises:
        BundleNotFoundError: the blob is gone (deleted since its record was read).
    """
    with _LOCK:
        hit = _CACHE.get(digest)
    if hit is not None:
        return hit
    if size < 8:
        return None
    n = int.from_bytes(_read(store, digest, 0, 8), "little")
    if n > MAX_HEADER_BYTES or 8 + n > size:
        return None
    try:
        header = json.loads(_read(store, digest, 8, 8 + n))
    except ValueError:
        return None
    if not isinstance(header, dict):
        return None
    summary = parse_summary(header)
    with _LOCK:
        _CACHE[digest] = summary
    return summary
