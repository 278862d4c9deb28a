"""Client defaults and the ``MCNC_*`` environment (read when a client is created)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClientConfig", "env_flag", "mcnc_home", "resolve_config", "token_path"]

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


def resolve_config(
    base_url: str | None,
    token: str | None,
    cache_dir: str | os.PathLike[str] | None,
    offline: bool | None,
    timeout: float | None,
    progress: bool | None,
    retries: int,
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
    )
