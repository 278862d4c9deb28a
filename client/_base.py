"""I/O-free client logic shared by ``Client`` and ``AsyncClient``: refs, requests, errors, hints, retries.

``_async.py`` holds the one implementation of the request flow; ``_sync.py`` is generated from it
(``scripts/unasync.py``), so everything that does not wait on the network lives here, once.
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from client._bounds import MAX_HEADER, Expect, bundle_check, layout_check
from client._cache import LocalCache
from client._config import ClientConfig, ClientLimits
from client._exceptions import (
    APIError,
    AuthenticationError,
    CacheFallbackWarning,
    IntegrityError,
    InvalidArgumentError,
    MCNCClientError,
    NotFoundError,
    OfflineError,
    PermissionDeniedError,
    ResponseTooLargeError,
    error_for,
)
from client._models import TagInfo
from mcnc_core.refs import Ref, parse_ref, validate_name, validate_tag

__all__ = [
    "BaseClient",
    "Ref",
    "base_bytes",
    "buffered",
    "bundle_bytes",
    "declared_int",
    "expect_bundle",
    "expect_safetensors",
    "expect_weights",
    "parse_ref",
    "retry_delay",
]

_HEX64 = re.compile(r"(?:sha256:)?([0-9a-f]{64})")
USER_AGENT = "mcnc-client/0.1"
TOKEN_HELP = "pass a token: MCNC_TOKEN=<token>, --token <token> (token= in Python) or `mcnc login` (the token file)"


def retry_delay(
    attempt: int, retries: int, status: int | None, retry_after: float | None, max_retry_after: float = 10.0
) -> float | None:
    """Seconds to wait before retry ``attempt + 1``, or ``None`` to give up.

    Retried: connection errors (``status is None``) and 503 with exponential backoff and jitter
    (0.5, 1, 2 s ...), and 429 after the server's ``Retry-After`` (1 s if it names none). A
    ``Retry-After`` over ``max_retry_after`` (``MCNC_MAX_RETRY_AFTER``) is not waited for: the
    caller gets the ``RateLimitError`` at once instead of a stall. Nothing else is retried; the
    request's deadline bounds the sum of the waits.
    """
    if attempt >= retries:
        return None
    if status == 429:
        wait = retry_after if retry_after is not None else 1.0
        return wait if wait <= max_retry_after else None
    if status is None or status == 503:
        return 0.5 * 2**attempt * (0.8 + 0.4 * random.random())
    return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date; ``None`` if absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time() if when.tzinfo is not None else math.inf
    return max(0.0, seconds) if not math.isnan(seconds) else None


def declared_int(data: Any, key: str) -> int | None:
    """A non-negative integer field of a JSON object the server sent, or ``None``."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if type(value) is int and value >= 0 else None


def buffered(resp: httpx.Response, body: bytes) -> httpx.Response:
    """``resp`` with its (bounded, already decoded) body in memory, for ``.json()`` and ``.content``."""
    skip = {"content-encoding", "content-length", "transfer-encoding"}
    headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in skip]
    return httpx.Response(resp.status_code, headers=headers, content=body, request=resp.request)


def expect_bundle(digest: str, declared: int | None, limits: ClientLimits) -> Expect:
    """A bundle download: at most ``MCNC_MAX_BUNDLE_BYTES``, and no more than the size the server
    declared for it; an MCNC bundle's header, which fixes its exact length.

    Raises:
        ResponseTooLargeError: the declared size is already over the cap (nothing is requested).
    """
    what = f"bundle sha256:{digest[:16]}"
    if declared is not None and declared > limits.max_bundle_bytes:
        raise ResponseTooLargeError(
            f"{what}: the server declares {declared:,} B, over the client's cap of {limits.max_bundle_bytes:,} B "
            "(MCNC_MAX_BUNDLE_BYTES); raise MCNC_MAX_BUNDLE_BYTES if the server is right",
            limit=limits.max_bundle_bytes,
            setting="MCNC_MAX_BUNDLE_BYTES",
        )
    if declared is not None and declared < limits.max_bundle_bytes:
        return Expect(what, declared, None, on_header=bundle_check(what))
    return Expect(what, limits.max_bundle_bytes, "MCNC_MAX_BUNDLE_BYTES", on_header=bundle_check(what))


def expect_safetensors(what: str, layout: Mapping[str, tuple[str, tuple[int, ...]]], source: str) -> Expect:
    """A safetensors download holding exactly ``layout`` (a base, a weights file): its length is
    at most a header plus the data ``layout`` implies, and its header must list those tensors."""
    data = sum(math.prod(shape) * _ITEMSIZE.get(dtype, 8) for dtype, shape in layout.values())
    return Expect(what, 8 + MAX_HEADER + data, None, source=source, on_header=layout_check(what, layout))


def expect_weights(digest: str, num_params: int | None) -> Expect:
    """A weights file whose tensors the client does not know (``verify=False``): a header plus at
    most 8 bytes per parameter the server declared, when it declared them."""
    what = f"weights of sha256:{digest[:16]}"
    if num_params is None:
        return Expect(what, 1 << 62, None, source="no bound: the server declared no size")
    return Expect(what, 8 + MAX_HEADER + 8 * num_params, None, source="8 B for each parameter the server declared")


_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
             "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def error_from_response(status: int, headers: Any, body: bytes, request: str = "") -> APIError:
    """Build the typed exception for an error response (envelope, else ``X-Error-Code``, else status).

    ``request`` (``"GET /models/x"``) stands in for the message when the body has none.
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


def not_found_hint(ref: Ref, tags: list[TagInfo], endpoint: str) -> str:
    """What to try after a 404 for ``ref``: the tags its name does have, or how to list names."""
    if ref.name is None:
        return f"no bundle has this digest on {endpoint}"
    have = [t.tag for t in tags if t.name == ref.name]
    if have:
        listed = ", ".join(f"{ref.name}:{t}" for t in have[:10])
        return f"{ref.name} has no tag {ref.tag!r} (no tag means 'latest'); did you mean {listed}?"
    return f"the server {endpoint} has no model named {ref.name!r}; `mcnc ls` lists the names it holds"


def bundle_bytes(obj: Any) -> bytes:
    """What ``push`` uploads: bytes as given, a file's bytes, or an ``mcnc_core.Bundle``'s."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).read_bytes()
    to_bytes = getattr(obj, "to_bytes", None)
    if to_bytes is None:
        raise TypeError(f"push() takes a path, bytes or an mcnc_core.Bundle, got {type(obj).__name__}")
    return bytes(to_bytes())


def base_bytes(obj: Any) -> bytes:
    """What ``push_base`` uploads: bytes, a safetensors file's bytes, or a state dict serialised."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).read_bytes()
    if isinstance(obj, dict):
        from safetensors.torch import save

        return save({k: v.detach().contiguous().cpu() for k, v in obj.items()})
    raise TypeError(f"push_base() takes a path, bytes or a state dict, got {type(obj).__name__}")


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

    def _api_error(self, status: int, headers: Any, body: bytes, request: str) -> APIError:
        """The typed error of a response, with a hint on how to pass a token for 401 and 403."""
        err = error_from_response(status, headers, body, request)
        if isinstance(err, AuthenticationError):
            if self.config.token_source is None:
                return err.with_hint(f"no token was sent; {TOKEN_HELP}")
            return err.with_hint(f"the server refused the token from {self.config.token_source}; {TOKEN_HELP}")
        if isinstance(err, PermissionDeniedError):
            return err.with_hint(
                f"the token from {self.config.token_source} lacks the scope (uploads need 'write', deletes "
                "'admin'); ask the server's operator for one that has it"
            )
        return err

    def _check_online(self, action: str) -> None:
        """Refuse ``action`` (which needs the server) in offline mode, saying so."""
        if self.config.offline:
            raise OfflineError(
                f"offline mode is on (offline=True, --offline or MCNC_OFFLINE=1): {action} needs the server "
                f"{self.base_url}; turn offline mode off to do it"
            )

    def _offline_miss(self, what: str) -> OfflineError:
        return OfflineError(
            f"offline mode is on (offline=True, --offline or MCNC_OFFLINE=1) and {what} is not in the cache "
            f"{self.cache.root} (`mcnc cache ls` lists what is); fetch it once online"
        )

    def _local_digest(self, ref: Ref) -> str | None:
        """Resolve without the network when possible: a digest ref, or a cached name:tag offline."""
        if ref.digest:
            return ref.digest
        if self.config.offline:
            assert ref.name is not None and ref.tag is not None
            digest = self.cache.read_ref(ref.name, ref.tag)
            if digest is None:
                raise self._offline_miss(repr(str(ref)))
            return digest
        return None

    def _cached_ref(self, ref: Ref) -> str | None:
        return self.cache.read_ref(ref.name, ref.tag) if ref.name and ref.tag else None

    def _fall_back(self, ref: Ref, digest: str, exc: MCNCClientError) -> str:
        """Use the cached digest of ``ref`` after the server failed, with a ``CacheFallbackWarning``."""
        warnings.warn(
            f"{exc}; using the cached {ref} (sha256:{digest[:16]}), which may be out of date",
            CacheFallbackWarning,
            stacklevel=4,
        )
        return digest

    @staticmethod
    def _digest_of(data: Any, ref: Ref) -> str:
        """The bundle digest in a ``GET /models/{ref}`` body."""
        m = _HEX64.fullmatch(str(data.get("id") or data.get("digest") or "") if isinstance(data, dict) else "")
        if m is None:
            raise IntegrityError(f"the server named no digest for {str(ref)!r}")
        return m.group(1)

    def _remember(self, ref: Ref, digest: str) -> None:
        """Point ``ref`` at ``digest`` in the cache, once the cache holds that digest's verified blob
        (never before: an offline load must not find a ref to a blob that failed its check)."""
        if ref.name and ref.tag and self.cache.has(digest):
            self.cache.write_ref(ref.name, ref.tag, digest)

    @staticmethod
    def _model_path(ref: str | Ref) -> str:
        """``/models/<canonical ref>`` (``name:tag`` spelled out, so ``x/weights`` stays a name)."""
        return f"/models/{parse_ref(ref) if isinstance(ref, str) else ref}"

    @staticmethod
    def _push_params(name: str | None, tag: str | None) -> dict[str, str]:
        if tag is not None and name is None:
            raise InvalidArgumentError("push(tag=...) needs a name= too")
        params = {}
        if name is not None:
            params["name"] = validate_name(name)
        if tag is not None:
            params["tag"] = validate_tag(tag)
        return params

    def _with_404_hint(self, exc: NotFoundError, ref: Ref, tags: list[TagInfo]) -> APIError:
        return exc.with_hint(not_found_hint(ref, tags, self.base_url))
