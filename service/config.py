"""``Settings``: every server option, read from ``MCNC_*`` environment variables at startup."""

from __future__ import annotations

import ipaddress
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SCOPES", "Settings", "default_data_dir", "get_settings", "is_loopback"]

SCOPES = ("read", "write", "admin")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/mcnc``, else ``~/.local/share/mcnc``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "mcnc"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Server configuration; each field ``x`` is the env var ``MCNC_X`` (booleans: 1/true/yes/on)."""

    model_config = SettingsConfigDict(env_prefix="MCNC_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Stores (docs/service.md "Scaling out"): None = embedded under data_dir.
    database_url: str | None = None  # sqlite:///... or postgresql+psycopg://user:pw@host/db
    blob_url: str | None = None  # file:///abs/dir or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # an S3-compatible server (MinIO, Ceph, ...); None = AWS
    s3_multipart_bytes: int = Field(64 << 20, ge=5 << 20)  # uploads from this size on go in parts of it
    local_cache_bytes: int = Field(16 << 30, ge=0)  # local copies of bases kept from a remote blob store
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    redis_url: str | None = None
    memory_cache_bytes: int = Field(1 << 30, ge=0)
    redis_cache_bytes: int = Field(4 << 30, ge=0)
    redis_ttl: int = Field(24 * 3600, ge=1)
    redis_chunk_bytes: int = Field(8 << 20, ge=1024, le=8 << 20)
    redis_prefix: str = "mcnc:"
    api_tokens: str | None = None
    public_read: bool = False
    allow_insecure: bool = False
    # Hosts a loopback server without tokens answers besides localhost, 127.0.0.1, [::1] and `host`
    # (comma-separated names; any port): other Host headers are refused (DNS rebinding).
    allowed_hosts: str = ""
    max_upload_bytes: int = Field(1 << 30, ge=1)
    # Slow clients (docs/service.md "Connections and slow clients").
    read_timeout: float = Field(30.0, gt=0)  # for a request's head, and between two chunks of its body (408)
    upload_deadline: float = Field(300.0, gt=0)  # for an upload's whole body, however it trickles in (408)
    keep_alive_timeout: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(512, ge=1)  # connections + requests in flight; beyond: 503 (uvicorn)
    # Connections one remote IP may hold at once; beyond: 503 as it opens. Behind a reverse proxy every
    # client has the proxy's IP: set it to max_connections there (and cap clients in the proxy).
    max_client_connections: int = Field(64, ge=1)
    max_concurrent_uploads: int = Field(16, ge=1)  # beyond: 503 too_many_uploads + Retry-After
    # Uploads one remote IP may have in progress at once; beyond: 429 too_many_client_uploads (issue 19 N8).
    # Behind a reverse proxy every client has the proxy's IP: set it to max_concurrent_uploads there.
    max_client_uploads: int = Field(4, ge=1)
    staging_bytes: int = Field(4 << 30, ge=1)  # upload bytes staged on local disk at once; beyond: 507
    shutdown_timeout: float = Field(10.0, ge=0)  # on SIGTERM, requests still running are cut after this
    # A response piece (up to 4 MiB) the client does not take within this is the end of its connection:
    # a reader that stopped must not hold a reconstruction (or its memory) for good. 0 = never.
    write_timeout: float = Field(120.0, ge=0)
    max_params: int = Field(10**10, ge=1)
    # Memory that reconstructions in flight may use together (None: half of what the process may use,
    # cgroup-aware, less the memory tier). A tensor needs 3x its float32 bytes while it is built and
    # sent; a bundle with a tensor over the whole budget is refused at upload (docs/service.md).
    reconstruction_memory_bytes: int | None = Field(None, ge=1 << 20)
    # Uploads up to this many parameters are reconstructed and checked against their fingerprint
    # before they are stored; larger ones (and deltas whose base is not here yet) are checked in
    # full before the first byte of their weights is served.
    verify_max_params: int = Field(10**9, ge=0)
    max_concurrent_reconstructions: int = Field(2, ge=1)
    max_queued_reconstructions: int = Field(32, ge=0)
    # CPU: memory of dropped outputs kept for the next reconstructions (no page faults on reuse).
    recycle_bytes: int = Field(512 << 20, ge=0)
    rate_limit: float = Field(0.0, ge=0, description="requests per second per token (or client); 0 = off")
    rate_limit_burst: int = Field(60, ge=1)
    load_timeout: float = Field(600.0, gt=0)
    # PEFT adapters served on the Hub routes: dtype of the LoRA factors, and the export cache's budget.
    adapter_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    adapter_cache_bytes: int = Field(256 << 20, ge=0)
    # Sidecar files of Hub repos (config.json, tokenizer files, README.md): POST /files, file= on pushes.
    max_file_bytes: int = Field(32 << 20, ge=1)  # one file's size; beyond: 413
    max_files: int = Field(64, ge=0, le=1000)  # files attached to one tag or named base; beyond: 400
    # Adapters larger than adapter_cache_bytes are kept on local disk under data_dir (LRU), up to this.
    adapter_disk_bytes: int = Field(4 << 30, ge=0)
    # Hub listing (GET /api/models, /commits): the most items a page holds; a client's limit= above it
    # gets pages of this size, each with a Link to the next (docs/service.md "Hub listing").
    hub_page_size: int = Field(1000, ge=1, le=1000)

    @field_validator("redis_url", "api_tokens", "database_url", "blob_url", "s3_endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    def resolved_database_url(self) -> str:
        """``database_url``, else the embedded SQLite file ``<data_dir>/mcnc.sqlite3``."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'mcnc.sqlite3'}"

    def resolved_blob_url(self) -> str:
        """``blob_url``, else ``file://<data_dir>/blobs``."""
        return self.blob_url or (self.data_dir.resolve() / "blobs").as_uri()

    def resolved_reconstruction_memory(self) -> int:
        """``reconstruction_memory_bytes``, else half the process's memory limit less the memory tier
        (at least 256 MiB)."""
        if self.reconstruction_memory_bytes is not None:
            return self.reconstruction_memory_bytes
        from service.memory import process_memory_limit

        return max(process_memory_limit() // 2 - self.memory_cache_bytes, 256 << 20)

    def extra_hosts(self) -> frozenset[str]:
        """``allowed_hosts`` as lowercase names (brackets of IPv6 literals removed)."""
        return frozenset(h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",") if h.strip())

    def tokens(self) -> dict[str, frozenset[str]]:
        """Parse ``api_tokens`` (JSON ``{"token": ["read", ...]}`` or a path to such a file).

        Raises:
            ValueError: malformed JSON, unknown scope, or an empty token.
        """
        if self.api_tokens is None:
            return {}
        text = self.api_tokens.strip()
        if not text.startswith(("{", "[")):
            try:
                text = Path(text).expanduser().read_text()
            except OSError as exc:
                raise ValueError(f"MCNC_API_TOKENS is neither JSON nor a readable file: {exc}") from exc
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"MCNC_API_TOKENS is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError('MCNC_API_TOKENS must be a JSON object {"token": ["read", "write", "admin"]}')
        out: dict[str, frozenset[str]] = {}
        for token, scopes in raw.items():
            if not token or not isinstance(scopes, list) or not all(s in SCOPES for s in scopes):
                raise ValueError(f"MCNC_API_TOKENS: token entries need a list of scopes from {SCOPES}, got {scopes!r}")
            out[token] = frozenset(scopes)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (read once)."""
    return Settings()  # type: ignore[call-arg]  # fields come from the environment
