"""Client defaults and the ``MCNC_*`` environment (read when a client is created)."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from client._exceptions import InvalidArgumentError

__all__ = ["ClientConfig", "ClientLimits", "env_flag", "mcnc_home", "resolve_config", "token_path"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """Booleans accept 1/true/yes/on in any case."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def mcnc_home() -> Path:
    """``MCNC_HOME``, else ``$XDG_CACHE_HOME/mcnc``, else ``~/.cache/mcnc``."""
    if os.environ.get("MCNC_HOME"):
        return Path(os.environ["MCNC_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mcnc"


def token_path() -> Path:
    """The token file ``mcnc login`` writes: ``$MCNC_HOME/token`` (``MCNC_TOKEN`` wins over it)."""
    return mcnc_home() / "token"


@dataclass(frozen=True)
class ClientLimits:
    """What the client accepts from a server it does not trust (docs/client.md "Limits").

    Every bound has an ``MCNC_<NAME>`` environment variable (``MCNC_MAX_JSON_BYTES`` ...); a
    response beyond one raises the error named, naming the bound and its variable.

    Attributes:
        max_json_bytes: an API response body (JSON) the client reads into memory
            (``ResponseTooLargeError``).
        max_error_bytes: an error response body (``ResponseTooLargeError``).
        max_bundle_bytes: a bundle download; the size the server declared for the ref, when it
            did, bounds it tighter (``ResponseTooLargeError``). Default: the server's default
            upload limit.
        request_deadline: seconds one API request may take, retries and back-off included
            (``DeadlineExceededError``).
        download_deadline: seconds one download (bundle, base or weights file) may take, retries
            and back-off included; a download cut by it resumes on the next call
            (``DeadlineExceededError``).
        max_retry_after: the longest ``Retry-After`` of a 429/503 the client waits for; a server
            asking for more gets its ``RateLimitError`` back at once.
        max_load_bytes: memory ``load`` / ``download_adapter`` may allocate (outputs plus the
            decode's peak, factors included); ``None``: what this process can get now (cgroup,
            ``RLIMIT_AS`` and free memory; on CUDA the device's free memory)
            (``InsufficientMemoryError``).
    """

    max_json_bytes: int = 16 << 20
    max_error_bytes: int = 1 << 20
    max_bundle_bytes: int = 1 << 30
    request_deadline: float = 120.0
    download_deadline: float = 3600.0
    max_retry_after: float = 10.0
    max_load_bytes: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "max_load_bytes":
                continue
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (value == 0 and f.name != "max_retry_after"):
                raise InvalidArgumentError(
                    f"client limit {f.name} (MCNC_{f.name.upper()}) must be a positive number, got {value!r}"
                )

    @classmethod
    def from_env(cls, **overrides: float | None) -> ClientLimits:
        """Defaults, overridden by ``MCNC_<NAME>`` variables, overridden by ``overrides``."""
        kw: dict[str, float | None] = {}
        for f in fields(cls):
            text = os.environ.get(f"MCNC_{f.name.upper()}", "").strip()
            if text:
                seconds = f.name.endswith(("deadline", "after"))
                try:
                    kw[f.name] = float(text) if seconds else int(text)
                except ValueError:
                    kind = "number of seconds" if seconds else "whole number of bytes"
                    raise InvalidArgumentError(f"MCNC_{f.name.upper()}={text!r} is not a {kind}") from None
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs that does not change during its life."""

    endpoint: str
    token: str | None
    cache_dir: Path
    offline: bool
    progress: bool
    timeout: float
    retries: int
    token_source: str | None = None  # where ``token`` came from, for 401/403 hints
    limits: ClientLimits = field(default_factory=ClientLimits)


def resolve_config(
    base_url: str | None,
    token: str | None,
    cache_dir: str | os.PathLike[str] | None,
    offline: bool | None,
    timeout: float | None,
    progress: bool | None,
    retries: int,
    limits: ClientLimits | None = None,
) -> ClientConfig:
    """Arguments win over the environment, which wins over defaults.

    Token: ``token=``, else ``MCNC_TOKEN``, else the file ``$MCNC_HOME/token``.
    """
    home = mcnc_home()
    source = "token=" if token is not None else None
    if token is None and os.environ.get("MCNC_TOKEN"):
        token, source = os.environ["MCNC_TOKEN"], "MCNC_TOKEN"
    if token is None and token_path().is_file():
        token = token_path().read_text().strip() or None
        source = f"the token file {token_path()}" if token else None
    if cache_dir is None:
        cache_dir = os.environ.get("MCNC_CACHE_DIR") or home / "hub"
    if timeout is None:
        timeout = float(os.environ.get("MCNC_DOWNLOAD_TIMEOUT", "10"))
    if progress is None:
        progress = not env_flag("MCNC_DISABLE_PROGRESS_BARS") and sys.stderr.isatty()
    return ClientConfig(
        endpoint=(base_url or os.environ.get("MCNC_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        token=token,
        cache_dir=Path(cache_dir).expanduser(),
        offline=env_flag("MCNC_OFFLINE") if offline is None else offline,
        progress=progress,
        timeout=timeout,
        retries=retries,
        token_source=source,
        limits=limits if limits is not None else ClientLimits.from_env(),
    )
