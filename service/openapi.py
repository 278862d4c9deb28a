"""OpenAPI fragments the routers share: binary bodies are ``application/octet-stream``, not JSON.

Routes that return a ``Response`` they build themselves would otherwise be documented as
``application/json`` with an empty schema; uploads read the raw request body, which FastAPI
cannot see from the signature.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from mcnc_core.refs import DIGEST_PATTERN, REF_PATTERN

__all__ = ["DigestPath", "RefPath", "binary_body", "binary_responses"]

# Path parameters with their grammar in the spec; the routes' own parsing (``parse_ref``) enforces it
# and answers 400 ``invalid_request`` (or the resource's 404) with a message naming the expected form.
RefPath = Annotated[
    str,
    Path(
        description="`name`, `org/name`, either with `:tag` (default `latest`), or a digest `sha256:<64 hex>`",
        json_schema_extra={"pattern": REF_PATTERN},
    ),
]
DigestPath = Annotated[
    str,
    Path(description="a digest: `sha256:<64 hex>` or the 64 hex digits", json_schema_extra={"pattern": DIGEST_PATTERN}),
]

_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def binary_body(what: str) -> dict[str, Any]:
    """``openapi_extra`` for an upload whose body is the raw file (``curl --data-binary @file``)."""
    return {"requestBody": {"required": True, "description": what, "content": _BINARY}}


def binary_responses(what: str) -> dict[int | str, dict[str, Any]]:
    """``responses`` for a download: 200 (whole), 206 (a ``Range``), 304 (``If-None-Match``)."""
    return {
        200: {"description": what, "content": _BINARY},
        206: {"description": f"{what}: the requested byte range (Content-Range)", "content": _BINARY},
        304: {"description": "not modified (If-None-Match matched the ETag)"},
    }
