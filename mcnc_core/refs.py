"""Model references (``name``, ``org/name:tag``, ``sha256:<hex>``): the one parser client and server share.

Torch-free and dependency-free, so ``import client`` and ``mcnc --help`` stay light. The grammar
follows Docker image references and Hugging Face repo ids:

* a digest: ``sha256:<64 hex>`` or a bare 64-hex id, in any case (stored lower-case);
* otherwise ``name[:tag]``, ``name`` being ``part`` or ``org/part``, each part 1-128 of
  ``[A-Za-z0-9._-]`` starting with a letter or digit and not ``resolve`` (the Hub routes'
  ``/{repo}/resolve/...`` word); a tag is 1-128 of ``[A-Za-z0-9._-]`` not starting with ``.`` or
  ``-``; no tag means ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcnc_core.errors import RefError

__all__ = ["DEFAULT_TAG", "DIGEST_PATTERN", "REF_PATTERN", "Ref", "parse_ref", "validate_name", "validate_tag"]

DEFAULT_TAG = "latest"
_HEX = re.compile(r"[0-9a-f]{64}")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})?")
_RESERVED_SEGMENT = "resolve"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# The same grammar as anchored patterns (OpenAPI's ``pattern`` for path parameters). ``parse_ref``
# is stricter in one point: a name part ``resolve`` is reserved. ECMA-262 syntax (no inline flags).
DIGEST_PATTERN = r"^(?:sha256:)?[0-9a-fA-F]{64}$"
REF_PATTERN = rf"^(?:(?:sha256:)?[0-9a-fA-F]{{64}}|(?![sS][hH][aA]256:){_NAME.pattern}(?::{_TAG.pattern})?)$"


@dataclass(frozen=True)
class Ref:
    """A parsed reference: ``digest`` (64 lower-case hex) for digest refs, else ``name`` and ``tag``.

    ``str(ref)`` is the canonical form, ``sha256:<hex>`` or ``name:tag`` (the tag always
    spelled out, so ``acme/weights:latest`` never reads as a ``/weights`` route).
    """

    digest: str | None = None
    name: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        return f"sha256:{self.digest}" if self.digest else f"{self.name}:{self.tag}"


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is ``part`` or ``org/part`` (module docstring); else raise ``RefError``."""
    if not _NAME.fullmatch(name) or _RESERVED_SEGMENT in name.split("/"):
        raise RefError(
            f"invalid {what} {name!r}: use name or org/name, each part 1-128 of [A-Za-z0-9._-] starting with "
            f"a letter/digit, and not {_RESERVED_SEGMENT!r}"
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is 1-128 of ``[A-Za-z0-9._-]`` not starting with ``.`` or ``-``; else ``RefError``."""
    if not _TAG.fullmatch(tag):
        raise RefError(f"invalid tag {tag!r}: use 1-128 of [A-Za-z0-9._-], not starting with . or -")
    return tag


def parse_ref(ref: str) -> Ref:
    """Parse ``<64-hex>``, ``sha256:<hex>``, ``name`` (tag ``latest``) or ``name:tag``.

    Raises:
        RefError: anything else (path characters, a malformed digest, empty parts).
    """
    if ref[:7].lower() == "sha256:":
        digest = ref[7:].lower()
        if not _HEX.fullmatch(digest):
            raise RefError(f"invalid digest in {ref!r}: expected sha256:<64 hex digits>")
        return Ref(digest=digest)
    if len(ref) == 64 and _HEX.fullmatch(ref.lower()):
        return Ref(digest=ref.lower())
    name, sep, tag = ref.partition(":")
    return Ref(name=validate_name(name), tag=validate_tag(tag) if sep else DEFAULT_TAG)
