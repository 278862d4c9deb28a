"""What the client returns: plain dataclasses, independent of the ``service`` package."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["BaseInfo", "FileInfo", "ModelInfo", "TagInfo", "TransferReport"]


def _pick(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}  # newer servers may add fields


@dataclass(frozen=True)
class TagInfo:
    name: str
    tag: str
    digest: str
    updated_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TagInfo:
        return cls(**_pick(cls, data))


@dataclass(frozen=True)
class ModelInfo:
    """A stored bundle as the server describes it (``POST /bundles``, ``GET /models/{ref}``)."""

    id: str
    digest: str
    size: int
    num_params: int
    reconstructed_bytes: int
    stored_numbers: int
    compression_ratio: float
    mode: str
    base: str | None = None
    created_at: float = 0.0
    tags: list[TagInfo] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    created: bool | None = None  # push(): True when the server stored new bytes (201)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, created: bool | None = None) -> ModelInfo:
        kw = _pick(cls, data)
        kw["tags"] = [TagInfo.from_json(t) for t in data.get("tags", [])]
        return cls(**kw, created=created) if "created" not in kw else cls(**kw)


@dataclass(frozen=True)
class FileInfo:
    """A sidecar file attached to a repo (``config.json``, tokenizer files, ``README.md``)."""

    name: str
    sha256: str
    size: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileInfo:
        return cls(**_pick(cls, data))


@dataclass(frozen=True)
class BaseInfo:
    """A registered base model, addressed by the state digest delta bundles reference.

    ``name``, ``commit`` and ``files``: the repo name ``push_base(name=...)`` registered it under, that
    repo's Hub commit id and its sidecar files (None, None, [] without a name).
    """

    digest: str
    file_sha256: str
    size: int
    num_tensors: int
    num_params: int
    created_at: float = 0.0
    name: str | None = None
    commit: str | None = None
    files: list[FileInfo] = field(default_factory=list)
    created: bool | None = None  # push_base(): True when the server stored new tensors (201)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, created: bool | None = None) -> BaseInfo:
        kw = _pick(cls, data)
        kw["files"] = [FileInfo.from_json(f) for f in data.get("files") or []]
        kw.setdefault("created", created)
        return cls(**kw)


@dataclass
class TransferReport:
    """What a load or download cost: bytes on the wire vs the full weights, and where time went.

    Attributes:
        ref: what was asked for; ``digest``: the bundle it resolved to.
        bytes_received: body bytes downloaded (bundle, base and weights; 0 when all was cached).
        full_weights_bytes: bytes of the full reconstructed weights (what a plain download costs).
        seconds_network: time spent on requests and downloads.
        seconds_reconstruct: time spent reconstructing (and verifying) locally.
        cached: names of what came from the local cache (``"bundle"``, ``"base"``).
    """

    ref: str
    digest: str = ""
    bytes_received: int = 0
    full_weights_bytes: int = 0
    seconds_network: float = 0.0
    seconds_reconstruct: float = 0.0
    cached: list[str] = field(default_factory=list)

    @property
    def saving(self) -> float:
        """``full_weights_bytes / bytes_received`` (``inf`` when nothing was downloaded)."""
        return self.full_weights_bytes / self.bytes_received if self.bytes_received else float("inf")

    def __str__(self) -> str:
        if not self.bytes_received:
            ratio = "nothing downloaded"
        else:
            ratio = f"{self.saving:.1f}x less" if self.saving >= 1 else f"{1 / self.saving:.1f}x more"
        return (
            f"{self.ref}: received {self.bytes_received:,} B instead of {self.full_weights_bytes:,} B "
            f"({ratio}); network {self.seconds_network:.3f} s, "
            f"reconstruction {self.seconds_reconstruct:.3f} s"
            + (f"; from cache: {', '.join(self.cached)}" if self.cached else "")
        )
