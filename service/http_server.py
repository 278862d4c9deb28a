"""``uvicorn_options(settings)``: the uvicorn arguments every way of serving uses (``mcnc serve``, tests).

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but waits forever for a
request's head on a fresh connection or for bytes of one trickling in (slowloris): the HTTP
protocol here (uvicorn's httptools one when installed, else its h11 one) also closes a connection
that has not sent a complete request head within ``MCNC_READ_TIMEOUT`` of opening or of its
previous response. Stalled bodies are the routes'
concern (``service.http.receive_body`` answers 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings

__all__ = ["HeadTimeoutH11Protocol", "uvicorn_options"]


class _HeadTimeout:
    """Closes a connection whose request head does not arrive within ``head_timeout`` seconds of
    opening or of its previous response (mixed into uvicorn's protocol classes)."""

    head_timeout = 30.0  # set per server by ``uvicorn_options`` (a subclass with the setting's value)
    cycle: object
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
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
    protocol = type(_BASE.__name__, (_BASE,), {"head_timeout": settings.read_timeout})
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": False,
    }
