"""I/O-free client logic shared by ``Client`` and ``AsyncClient``: refs, requests, errors, retries."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from client._cache import LocalCache, check_name
from client._config import ClientConfig
from client._exceptions import APIError, OfflineError, error_for

__all__ = ["BaseClient", "Ref", "parse_ref", "retry_delay"]

_HEX64 = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")
USER_AGENT = "mcnc-client/0.1"
MAX_RETRY_AFTER = 60.0


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a digest, or ``name`` with ``tag`` (``latest`` when omitted)."""

    text: str
    digest: str | None = None
    name: str | None = None
    tag: str = "latest"


def parse_ref(ref: str) -> Ref:
    """``<64 hex>``, ``sha256:<64 hex>``, ``name`` or ``name:tag`` (as Docker image references).

    Raises:
        ValueError: names or tags with characters other than letters, digits, ``. _ -``.
    """
    m = _HEX64.match(ref)
    if m:
        return Ref(ref, digest=m.group(1))
    name, sep, tag = ref.partition(":")
    return Ref(ref, name=check_name("name", name), tag=check_name("tag", tag) if sep else "latest")


def retry_delay(attempt: int, retries: int, status: int | None, retry_after: float | None) -> float | None:
    """Seconds to wait before retry ``attempt + 1``, or ``None`` to give up.

    Retried: connection errors (``status is None``) and 503 with exponential backoff and jitter
    (0.5, 1, 2 s ...), and 429 after the server's ``Retry-After`` (capped at 60 s). Nothing else.
    """
    if attempt >= retries:
        return None
    if status == 429:
        return min(retry_after if retry_after is not None else 1.0, MAX_RETRY_AFTER)
    if status is None or status == 503:
        return 0.5 * 2**attempt * (0.8 + 0.4 * random.random())
    return None


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_from_response(status: int, headers: Any, body: bytes, request: str = "") -> APIError:
    """Build the typed exception for an error response (envelope, else ``X-Error-Code``, else status).

    ``request`` (``"HEAD /bundles/x"``) stands in for the message when the body has none (HEAD).
    """
    code, message, request_id = headers.get("x-error-code") or "", "", None
    try:
        err = json.loads(body)["error"]
        code, message, request_id = err.get("code") or code, err.get("message", ""), err.get("request_id")
    except (ValueError, KeyError, TypeError):
        message = body[:200].decode("utf-8", "replace")
    message = message or (f"{request} failed" if request else "")
    retry_after = parse_retry_after(headers.get("retry-after"))
    return error_for(status, code or f"http_{status}", message, request_id, retry_after)


def digest_from_headers(headers: Any) -> str | None:
    """The bundle digest a response names (``X-MCNC-Bundle-Digest``, else a sha256 ``ETag``)."""
    for value in (headers.get("x-mcnc-bundle-digest"), (headers.get("etag") or "").strip('"')):
        m = _HEX64.match(value or "")
        if m:
            return m.group(1)
    return None


class BaseClient:
    """State and pure helpers shared by both clients (no I/O beyond the local cache)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.cache = LocalCache(config.cache_dir)

    @property
    def base_url(self) -> str:
        return self.config.endpoint

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"User-Agent": USER_AGENT}
        if self.config.token:
            h["Authorization"] = f"Bearer {self.config.token}"
        return {**h, **(extra or {})}

    def _check_online(self, what: str) -> None:
        if self.config.offline:
            raise OfflineError(f"offline mode (MCNC_OFFLINE): cannot {what}; it is not in the cache {self.cache.root}")

    def _cached_digest(self, ref: Ref) -> str | None:
        """Resolve without the network when possible: a digest ref, or a cached name:tag offline."""
        if ref.digest:
            return ref.digest
        if self.config.offline:
            assert ref.name is not None
            digest = self.cache.read_ref(ref.name, ref.tag)
            if digest is None:
                raise OfflineError(f"offline mode: {ref.text!r} is not in the cache {self.cache.root}")
            return digest
        return None

    def _remember(self, ref: Ref, digest: str) -> None:
        if ref.name:
            self.cache.write_ref(ref.name, ref.tag, digest)

    @staticmethod
    def _push_params(name: str | None, tag: str | None) -> dict[str, str]:
        params = {}
        if name is not None:
            params["name"] = check_name("name", name)
        if tag is not None:
            params["tag"] = check_name("tag", tag)
        return params
