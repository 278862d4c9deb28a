"""References (``name``, ``name:tag``, digests) and the records the stores keep about bundles, bases and tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from service.errors import InvalidRequestError

__all__ = [
    "DEFAULT_TAG",
    "BaseRecord",
    "BundleRecord",
    "Kind",
    "Ref",
    "TagRecord",
    "is_digest",
    "parse_ref",
    "validate_name",
    "validate_tag",
]

Kind = Literal["bundles", "bases"]
_HEX = re.compile(r"[0-9a-f]{64}")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})?")  # "name" or "org/name", as Hub repo ids
_RESERVED_SEGMENT = "resolve"  # the Hub routes' /{repo}/resolve/{revision}/{file}
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DEFAULT_TAG = "latest"


def is_digest(text: str) -> bool:
    """True for exactly 64 lowercase hex digits (a sha256 as stored)."""
    return _HEX.fullmatch(text) is not None


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``digest`` set for digest refs, else ``name`` and ``tag``."""

    digest: str | None = None
    name: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        return f"sha256:{self.digest}" if self.digest else f"{self.name}:{self.tag}"


def validate_name(name: str, what: str = "name") -> str:
    """Check a model name: ``name`` or ``org/name``, each part 1-128 of letters, digits and
    ``._-`` starting with a letter or digit, and not ``resolve`` (a Hub route word); return it."""
    if not _NAME.fullmatch(name) or _RESERVED_SEGMENT in name.split("/"):
        raise InvalidRequestError(
            f"invalid {what} {name!r}: use name or org/name, each part 1-128 of [A-Za-z0-9._-] starting with "
            f"a letter/digit, and not {_RESERVED_SEGMENT!r}"
        )
    return name


def validate_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise InvalidRequestError(f"invalid tag {tag!r}: use 1-128 of [A-Za-z0-9._-], not starting with . or -")
    return tag


def parse_ref(ref: str) -> Ref:
    """Parse ``<64-hex>``, ``sha256:<hex>``, ``name`` (tag ``latest``) or ``name:tag``.

    Raises:
        InvalidRequestError: anything else (path characters, bad digest, empty parts).
    """
    if ref.startswith("sha256:"):
        digest = ref[7:].lower()
        if not _HEX.fullmatch(digest):
            raise InvalidRequestError(f"invalid digest in {ref!r}: expected sha256:<64 hex digits>")
        return Ref(digest=digest)
    if _HEX.fullmatch(ref.lower()) and len(ref) == 64:
        return Ref(digest=ref.lower())
    name, sep, tag = ref.partition(":")
    return Ref(name=validate_name(name), tag=validate_tag(tag) if sep else DEFAULT_TAG)


@dataclass(frozen=True)
class BundleRecord:
    digest: str
    size: int
    num_params: int
    reconstructed_nbytes: int
    stored_numbers: int
    mode: str
    base_sha256: str | None
    base_name: str | None
    created_at: float


@dataclass(frozen=True)
class BaseRecord:
    digest: str  # state_digest of the tensors
    file_sha256: str
    size: int
    num_tensors: int
    num_params: int
    created_at: float


@dataclass(frozen=True)
class TagRecord:
    name: str
    tag: str
    digest: str
    updated_at: float
