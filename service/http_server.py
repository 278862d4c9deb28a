"""``uvicorn_options(settings)``: the uvicorn arguments every way of serving uses (``mcnc serve``, tests).

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but waits forever for a
request's head on a fresh connection or for bytes of one trickling in (slowloris): the HTTP
protocol here (uvicorn's httptools one when installed, else its h11 one) also closes a connection
that has not sent a complete request head within ``MCNC_READ_TIMEOUT`` of opening or of its
previous response. Stalled bodies are the routes'
concern (``service.http.receive_body`` answers 408). One client (remote IP) may hold at most
``MCNC_MAX_CLIENT_CONNECTIONS`` connections at once: beyond, a new one is answered 503 and closed as it
opens, so one client cannot take the whole ``MCNC_MAX_CONNECTIONS`` from the others (their
``/health/live`` included).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings

__all__ = ["HeadTimeoutH11Protocol", "uvicorn_options"]


class _HeadTimeout:
    """Closes a connection whose request head does not arrive within ``head_timeout`` seconds of
    opening or of its previous response (mixed into uvicorn's protocol classes)."""

    head_timeout = 30.0  # set per server by ``uvicorn_options`` (a subclass with the setting's value)
    per_client = 0  # the most connections one remote IP holds at once; 0 = no cap (set as above)
    # Open connections by remote IP, one dict per server (its subclass); the event loop's thread only.
    client_connections: ClassVar[dict[str, int]] = {}
    cycle: object
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._client: str | None = None
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else None
        if ip is not None and self.per_client > 0:
            held = self.client_connections.get(ip, 0)
            if held >= self.per_client:
                transport.write(_over_client_cap(ip, held))
                transport.close()
                return
            self.client_connections[ip] = held + 1
            self._client = ip
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        ip = getattr(self, "_client", None)
        if ip is not None:
            self._client = None
            left = self.client_connections.get(ip, 1) - 1
            if left > 0:
                self.client_connections[ip] = left
            else:
                self.client_connections.pop(ip, None)
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        waiting_after = self.cycle  # a new request head replaces the cycle
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out, waiting_after)

    def _head_timed_out(self, waiting_after: object) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            self._before_close()
            self.transport.close()

    def _before_close(self) -> None:
        pass


def _over_client_cap(ip: str, held: int) -> bytes:
    """A whole 503 response (written before any request is read) for a client over its connection cap."""
    message = (
        f"client {ip} already holds {held} connections, the most one client may hold "
        "(MCNC_MAX_CLIENT_CONNECTIONS): reuse or close some, then retry"
    )
    body = json.dumps({"error": {"code": "too_many_connections", "message": message}}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HeadTimeoutH11Protocol(_HeadTimeout, H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head does not arrive in time."""

    def _before_close(self) -> None:
        if self.conn.our_state in (h11.IDLE, h11.DONE):
            self.conn.send(h11.ConnectionClosed())


try:  # uvicorn's faster parser when installed (what its "auto" picks): ~1.3x the memory tier's throughput
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadTimeoutHttpToolsProtocol(_HeadTimeout, HttpToolsProtocol):
        """uvicorn's httptools protocol, closing connections whose request head does not arrive in time."""

    _BASE: type[_HeadTimeout] = HeadTimeoutHttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is the fallback
    _BASE = HeadTimeoutH11Protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` from ``settings`` (timeouts, budgets)."""
    per_server = {"head_timeout": settings.read_timeout, "per_client": settings.max_client_connections}
    protocol = type(_BASE.__name__, (_BASE,), per_server | {"client_connections": {}})
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": False,
    }
