"""References (``name``, ``name:tag``, digests; the grammar is ``mcnc_core.refs``) and the records the stores
keep about bundles, bases and tags."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from mcnc_core import refs
from mcnc_core.errors import RefError
from mcnc_core.refs import DEFAULT_TAG, Ref
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


def is_digest(text: str) -> bool:
    """True for exactly 64 lowercase hex digits (a sha256 as stored)."""
    return _HEX.fullmatch(text) is not None


def validate_name(name: str, what: str = "name") -> str:
    """``mcnc_core.refs.validate_name`` (shared with the client), failing as 400 ``invalid_request``."""
    try:
        return refs.validate_name(name, what)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


def validate_tag(tag: str) -> str:
    """``mcnc_core.refs.validate_tag`` (shared with the client), failing as 400 ``invalid_request``."""
    try:
        return refs.validate_tag(tag)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


def parse_ref(ref: str) -> Ref:
    """``mcnc_core.refs.parse_ref`` (the one grammar client and server share), failing as 400
    ``invalid_request``."""
    try:
        return refs.parse_ref(ref)
    except RefError as exc:
        raise InvalidRequestError(str(exc)) from exc


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
    metadata_json: str | None = None  # the bundle's ``x-`` keys as JSON; None: stored before 0.2
    verified_at: float | None = None  # when its weights last matched its fingerprint; None: not yet

    @property
    def metadata(self) -> dict[str, str] | None:
        """The bundle's ``x-`` metadata, or ``None`` when its row predates migration 0002."""
        return None if self.metadata_json is None else json.loads(self.metadata_json)


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
