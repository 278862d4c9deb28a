"""``uvicorn_options(settings)``: the uvicorn arguments every way of serving uses (``mcnc serve``, tests).

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but waits forever for a
request's head on a fresh connection or for bytes of one trickling in (slowloris): the HTTP
protocol here (uvicorn's httptools one when installed, else its h11 one) also closes a connection
that has not sent a complete request head within ``MCNC_READ_TIMEOUT`` of opening or of its
previous response. Stalled bodies are the routes' concern (``service.http.receive_body`` answers 408).

Connection caps, and why health checks get through them (N8). The caps cannot act when a
connection opens: the path is not known then, and a prober (``/health/live``) must be answered
even while one client, or many, hold every connection. So a connection is accepted, and the
decision is taken when its request head is complete:

- One client (remote IP) holds at most ``MCNC_MAX_CLIENT_CONNECTIONS`` connections. A connection
  over that cap is *on probation*: it must send its head within ``PROBATION_HEAD_TIMEOUT`` (2 s, or
  ``MCNC_READ_TIMEOUT`` when shorter), and only ``/health/live`` and ``/health/ready`` are answered
  on it; anything else is 503 ``too_many_connections`` (``Retry-After: 1``), and a head that does not
  come in time gets that 503 and the close. Probation connections do not count toward
  ``MCNC_MAX_CONNECTIONS``, so a client flooding sockets takes at most its own cap from the others.
  At most ``PROBATION_MAX`` (4,096) connections are on probation at once; beyond, a new one over its
  client's cap is answered 503 and closed as it opens.
- ``MCNC_MAX_CONNECTIONS`` (uvicorn's ``limit_concurrency``: open connections or requests in flight)
  is checked here instead of in uvicorn, with the same 503, and never for the health paths.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings

__all__ = ["HEALTH_PATHS", "PROBATION_HEAD_TIMEOUT", "PROBATION_MAX", "HeadTimeoutH11Protocol", "uvicorn_options"]

HEALTH_PATHS = frozenset({"/health/live", "/health/ready"})  # answered whatever the connection caps
PROBATION_HEAD_TIMEOUT = 2.0  # seconds a connection over its client's cap has to send its head
PROBATION_MAX = 4096  # connections on probation at once, per server (each holds a file descriptor)


class _HeadTimeout:
    """Closes a connection whose request head does not arrive within ``head_timeout`` seconds of
    opening or of its previous response, and applies the connection caps once the path is known
    (mixed into uvicorn's protocol classes; see the module's docstring)."""

    head_timeout = 30.0  # set per server by ``uvicorn_options`` (a subclass with the setting's value)
    per_client = 0  # the most connections one remote IP holds at once; 0 = no cap (set as above)
    max_connections: int | None = None  # MCNC_MAX_CONNECTIONS, checked here (set as above)
    # Open connections by remote IP, and [connections on probation], one of each per server (its
    # subclass); the event loop's thread only.
    client_connections: ClassVar[dict[str, int]] = {}
    probation: ClassVar[list[int]] = [0]
    app: ASGIApp
    connections: set[Any]
    tasks: set[Any]
    cycle: object
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inner_app, self.app = self.app, self._guarded
        self.limit_concurrency = None  # uvicorn's own check would refuse health probes too
        self._client: str | None = None
        self._on_probation = False
        self._answered = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        peer = transport.get_extra_info("peername")
        ip = peer[0] if isinstance(peer, tuple) and peer else None
        if ip is not None and self.per_client > 0:
            held = self.client_connections.get(ip, 0)
            if held >= self.per_client:
                if self.probation[0] >= PROBATION_MAX:
                    transport.write(_over_client_cap(ip, held))
                    transport.close()
                    return
                self.probation[0] += 1
                self._on_probation = True
                self._over = (ip, held)
            else:
                self.client_connections[ip] = held + 1
                self._client = ip
        self._arm_head_timer()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The caps, applied when the path is known: health paths always pass."""
        if scope["type"] == "http" and scope["path"] not in HEALTH_PATHS:
            if self._on_probation:
                ip, held = self._over
                message = _over_client_message(ip, held)
                body = json.dumps({"error": {"code": "too_many_connections", "message": message}}).encode()
                await send({"type": "http.response.start", "status": 503, "headers": _over_cap_headers(len(body))})
                await send({"type": "http.response.body", "body": body})
                return
            limit = self.max_connections
            # This connection and this request's task are counted already (uvicorn checks before adding
            # the task); connections on probation take nothing from the others.
            if limit is not None and (len(self.connections) - self.probation[0] > limit or len(self.tasks) > limit):
                await service_unavailable(scope, receive, send)  # type: ignore[arg-type]
                return
        await self._inner_app(scope, receive, send)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._answered = True
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
        if self._on_probation:
            self._on_probation = False
            self.probation[0] -= 1
        ip = self._client
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
        wait = min(self.head_timeout, PROBATION_HEAD_TIMEOUT) if self._on_probation else self.head_timeout
        self._head_timer = self.loop.call_later(wait, self._head_timed_out, waiting_after)

    def _head_timed_out(self, waiting_after: object) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            if self._on_probation and not self._answered:
                self.transport.write(_over_client_cap(*self._over))  # say why, as nothing was answered
            else:
                self._before_close()
            self.transport.close()

    def _before_close(self) -> None:
        pass


def _over_client_message(ip: str, held: int) -> str:
    return (
        f"client {ip} already holds {held} connections, the most one client may hold "
        "(MCNC_MAX_CLIENT_CONNECTIONS): reuse or close some, then retry (/health/live and /health/ready "
        "are answered on any connection)"
    )


def _over_cap_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/json"),
        (b"x-error-code", b"too_many_connections"),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
        (b"content-length", str(length).encode()),
    ]


def _over_client_cap(ip: str, held: int) -> bytes:
    """A whole 503 response (written without reading a request) for a client over its connection cap."""
    body = json.dumps({"error": {"code": "too_many_connections", "message": _over_client_message(ip, held)}}).encode()
    head = "HTTP/1.1 503 Service Unavailable\r\n" + "".join(
        f"{k.decode()}: {v.decode()}\r\n" for k, v in _over_cap_headers(len(body))
    )
    return head.encode() + b"\r\n" + body


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
    per_server = {
        "head_timeout": settings.read_timeout,
        "per_client": settings.max_client_connections,
        "max_connections": settings.max_connections,
    }
    protocol = type(_BASE.__name__, (_BASE,), per_server | {"client_connections": {}, "probation": [0]})
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,  # checked by the protocol, health exempt
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": False,
    }
