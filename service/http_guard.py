"""What the server refuses before a route runs: foreign ``Host`` names (DNS rebinding), cross-site
writes (``Origin``), and uploads past the concurrent-upload and staging-disk budgets.

A page on another site can make the browser send requests to ``http://127.0.0.1:8000``: simple
ones (``GET``, or ``POST`` with a form or ``text/plain`` body) need no CORS preflight, and DNS
rebinding (a name of the attacker's that resolves to 127.0.0.1) even lets it read the answers.
A tokenless loopback server, whose only protection is the bind address, therefore answers only
``Host`` names that are its own (``localhost``, ``127.0.0.1``, ``[::1]``, ``MCNC_HOST``,
``MCNC_ALLOWED_HOSTS``), and no server accepts a write whose ``Origin`` is another site; the
upload routes also refuse the content types a page can send without a preflight
(``service.errors.check_upload_type``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings, is_loopback
from service.errors import (
    CrossOriginError,
    HostNotAllowedError,
    StagingFullError,
    StalledReaderError,
    TooManyClientUploadsError,
    TooManyUploadsError,
    error_response,
)

__all__ = [
    "HostOriginMiddleware",
    "QuietStalledReaders",
    "SendTimeoutMiddleware",
    "UploadBudget",
    "allowed_hosts",
]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The ``Host`` names a tokenless loopback server answers, or ``None`` (no check: tokens protect,
    or the operator chose a non-loopback bind with ``MCNC_ALLOW_INSECURE``)."""
    if settings.tokens() or not is_loopback(settings.host):
        return None
    return frozenset({"localhost", "127.0.0.1", "::1", settings.host.lower().strip("[]")}) | settings.extra_hosts()


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``("name", port)`` of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``), None if malformed."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def _on_socket(scope: Scope) -> bool:
    """True when the request came in on a TCP socket (uvicorn's ``server`` is the local IP). In-process
    calls (Starlette's TestClient, httpx's ASGITransport) name no IP and no browser can reach them."""
    server = scope.get("server")
    if not server:
        return False
    try:
        ipaddress.ip_address(str(server[0]).strip("[]"))
    except ValueError:
        return False
    return True


class HostOriginMiddleware:
    """Pure ASGI: 403 ``host_not_allowed`` for a foreign ``Host`` (when ``hosts`` is set), 403
    ``cross_origin`` for a write (not GET/HEAD/OPTIONS) whose ``Origin`` is not this server's own."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        host = headers.get("host", "")
        problem = None
        if self.hosts is not None and _on_socket(scope):
            split = _split_host(host)
            if split is None or split[0] not in self.hosts:
                problem = HostNotAllowedError(
                    f"this server does not answer for Host {host!r} (a loopback server without tokens answers "
                    f"only {', '.join(sorted(self.hosts))}): add the name to MCNC_ALLOWED_HOSTS, or set "
                    "MCNC_API_TOKENS"
                )
        origin = headers.get("origin")
        write = scope["method"] not in _SAFE_METHODS
        if (
            problem is None
            and origin is not None
            and write
            and not _same_origin(origin, scope.get("scheme", "http"), host)
        ):
            problem = CrossOriginError(
                f"{scope['method']} from a page of {origin!r} refused: this server takes writes only from "
                "its own origin or from clients that send no Origin header (mcnc, curl, httpx)"
            )
        if problem is not None:
            response = error_response(problem.status, problem.code, problem.message)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _same_origin(origin: str, scheme: str, host: str) -> bool:
    """``origin`` (``scheme://name[:port]``) is the server's own: same scheme, name and port."""
    try:
        parts = urlsplit(origin)
        own = _split_host(host)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False  # "null" (sandboxed frames, file://) and malformed origins are never ours
    if own is None or parts.scheme != scheme or not parts.hostname:
        return False
    return (parts.hostname.lower(), port) == (own[0], own[1] or _DEFAULT_PORTS.get(scheme))


class UploadBudget:
    """Uploads in progress, per process and per client (remote IP), and the bytes they have staged on
    local disk, reserved as they arrive (never on the declared ``Content-Length``: clients declaring
    a large body and sending it slowly hold only what they sent, N3).

    Used from the event loop only (no lock: nothing awaits between a check and its update).
    """

    def __init__(self, max_uploads: int, max_bytes: int, max_client_uploads: int | None = None) -> None:
        self.max_uploads, self.max_bytes = max_uploads, max_bytes
        self.max_client_uploads = max_client_uploads or max_uploads
        self.uploads = 0
        self.staged = 0
        self.by_client: dict[str, int] = {}

    @contextmanager
    def slot(self, client: str | None = None) -> Iterator[UploadSlot]:
        """One upload's place: 429 ``too_many_client_uploads`` when ``client`` has
        ``MCNC_MAX_CLIENT_UPLOADS`` in progress, 503 ``too_many_uploads`` when all the server's are taken.
        Releases its bytes on exit."""
        held = self.by_client.get(client, 0) if client is not None else 0
        if client is not None and held >= self.max_client_uploads:
            raise TooManyClientUploadsError(
                f"client {client} already has {held} uploads in progress, the most one client may have "
                "(MCNC_MAX_CLIENT_UPLOADS): finish one, then retry",
                headers={"Retry-After": "5"},
            )
        if self.uploads >= self.max_uploads:
            raise TooManyUploadsError(
                f"{self.uploads} uploads are in progress, the most this server takes at once "
                "(MCNC_MAX_CONCURRENT_UPLOADS): retry later",
                headers={"Retry-After": "5"},
            )
        self.uploads += 1
        if client is not None:
            self.by_client[client] = held + 1
        slot = UploadSlot(self)
        try:
            yield slot
        finally:
            self.uploads -= 1
            self.staged -= slot.reserved
            if client is not None:
                left = self.by_client.get(client, 1) - 1
                if left > 0:
                    self.by_client[client] = left
                else:
                    self.by_client.pop(client, None)


class UploadSlot:
    """The staging bytes one upload holds; ``reserve_total`` before writing them."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget, self.reserved = budget, 0

    def check_declared(self, declared: int) -> None:
        """507 ``staging_full`` at once for a body that could never fit (over the whole budget); a body
        that could is reserved only as its bytes arrive."""
        budget = self.budget
        if declared > budget.max_bytes:
            raise StagingFullError(
                f"the body is {declared} bytes, more than all {budget.max_bytes} bytes of staging space "
                "(MCNC_STAGING_BYTES): ask the operator to raise MCNC_STAGING_BYTES"
            )

    def reserve_total(self, total: int) -> None:
        """Hold ``total`` bytes for this upload (more than held so far), or 507 ``staging_full``."""
        extra = total - self.reserved
        if extra <= 0:
            return
        budget = self.budget
        if budget.staged + extra > budget.max_bytes:
            raise StagingFullError(
                f"uploads in progress already hold {budget.staged} of the {budget.max_bytes} bytes of staging "
                f"space (MCNC_STAGING_BYTES); this one needs {total}: retry later",
                headers={"Retry-After": "30"},
            )
        budget.staged += extra
        self.reserved = total


log = logging.getLogger("mcnc.service")


class SendTimeoutMiddleware:
    """Pure ASGI: a response body piece the client does not take within ``timeout`` seconds ends the
    request (``StalledReaderError``; uvicorn then closes the connection). Without it a client that
    stops reading keeps its stream, and the reconstruction behind it, alive for as long as the socket
    lives. The wait for a piece covers the socket's buffers, so the timeout implies a lowest rate
    (4 MiB pieces in 120 s: ~35 KB/s); a client that slow resumes with ``Range``."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app, self.timeout = app, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout <= 0:
            await self.app(scope, receive, send)
            return

        async def timed_send(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            with anyio.move_on_after(self.timeout) as scope_:
                await send(message)
            if scope_.cancelled_caught:
                method, path = scope["method"], scope["path"]
                log.info("%s %s: the client took no bytes for %ss; closing", method, path, self.timeout)
                raise StalledReaderError(f"client stopped reading for {self.timeout}s")

        await self.app(scope, receive, timed_send)


class QuietStalledReaders(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" record for a ``StalledReaderError``: the
    middleware logs one line for it instead of a traceback per stalled client."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc: BaseException | None = record.exc_info[1] if record.exc_info else None
        for _ in range(16):  # through causes, contexts and exception groups (anyio task groups)
            if exc is None:
                break
            if isinstance(exc, StalledReaderError):
                return False
            group = getattr(exc, "exceptions", None)
            exc = exc.__cause__ or exc.__context__ or (group[0] if group else None)
        return True
