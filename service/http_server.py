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

Zero-copy file bodies (``ZEROCOPY``, the ASGI draft extension ``http.response.zerocopysend``). On the
httptools protocol (uvicorn's default here) a route may send ``{"type": ZEROCOPY, "file": <open
binary file>, "offset": int, "count": int}`` after its ``http.response.start`` (which declared the
``Content-Length``) instead of body messages: the protocol waits until everything written before
is on the socket, then sends the bytes from the file with ``os.sendfile`` in a worker thread (the
kernel copies page cache to socket, nothing passes through Python), then counts them against
the declared length; the route ends the response with an empty ``http.response.body`` as usual.
uvicorn has no such path of its own (``FileResponse`` reads 64 kB pieces through a thread and writes
them to the transport), and uvloop's loop has no ``sendfile``. A client that takes no byte for
``MCNC_WRITE_TIMEOUT`` ends the request (``StalledReaderError``, as ``SendTimeoutMiddleware``); a client
that closes is a disconnect (uvicorn's rule: later sends are dropped). The extension is announced
in ``scope["extensions"]`` only where it is served (not on the h11 protocol, not in TestClient), so a
route falls back to streaming elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
from typing import Any, BinaryIO, ClassVar

import anyio
import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings
from service.errors import StalledReaderError

__all__ = [
    "HEALTH_PATHS",
    "PROBATION_HEAD_TIMEOUT",
    "PROBATION_MAX",
    "ZEROCOPY",
    "HeadTimeoutH11Protocol",
    "uvicorn_options",
]

HEALTH_PATHS = frozenset({"/health/live", "/health/ready"})  # answered whatever the connection caps
PROBATION_HEAD_TIMEOUT = 2.0  # seconds a connection over its client's cap has to send its head
PROBATION_MAX = 4096  # connections on probation at once, per server (each holds a file descriptor)
ZEROCOPY = "http.response.zerocopysend"  # the ASGI extension served on the httptools protocol
_FLUSH_POLL = 0.0005  # seconds between checks that the transport's buffer is empty before a sendfile
log = logging.getLogger("mcnc.service")


class _HeadTimeout:
    """Closes a connection whose request head does not arrive within ``head_timeout`` seconds of
    opening or of its previous response, and applies the connection caps once the path is known
    (mixed into uvicorn's protocol classes; see the module's docstring)."""

    head_timeout = 30.0  # set per server by ``uvicorn_options`` (a subclass with the setting's value)
    per_client = 0  # the most connections one remote IP holds at once; 0 = no cap (set as above)
    max_connections: int | None = None  # MCNC_MAX_CONNECTIONS, checked here (set as above)
    write_timeout = 120.0  # MCNC_WRITE_TIMEOUT, for ZEROCOPY bodies (set as above); 0 = none
    zerocopy = False  # ZEROCOPY is served (the httptools protocol)
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
        cycle = getattr(send, "__self__", None)  # uvicorn's RequestResponseCycle (its bound ``send``)
        plain = self.transport.get_extra_info("sslcontext") is None  # sendfile would bypass TLS
        if scope["type"] == "http" and self.zerocopy and plain and hasattr(cycle, "expected_content_length"):
            scope.setdefault("extensions", {})[ZEROCOPY] = {}
            send = self._zerocopy_send(cycle, send)
        await self._inner_app(scope, receive, send)

    def _zerocopy_send(self, cycle: Any, send: Send) -> Send:
        """``send`` of ``cycle`` serving ``ZEROCOPY`` messages (module docstring), passing the others on."""

        async def zerocopy_send(message: Any) -> None:
            if message["type"] != ZEROCOPY:
                await send(message)
                return
            if cycle.disconnected:
                return
            count = int(message["count"])
            if not cycle.response_started or cycle.chunked_encoding is not False or cycle.response_complete:
                raise RuntimeError(f"{ZEROCOPY} needs a started response with a Content-Length")
            if count > cycle.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            transport = self.transport
            while transport.get_write_buffer_size() and not transport.is_closing():
                await asyncio.sleep(_FLUSH_POLL)  # bytes written before (the head) go first
            if transport.is_closing():
                return
            sock = transport.get_extra_info("socket")
            f: BinaryIO = message["file"]
            args = (sock.fileno(), f.fileno(), int(message.get("offset", 0)), count, self.write_timeout)
            try:
                await anyio.to_thread.run_sync(_sendfile_all, *args)
            except (BrokenPipeError, ConnectionResetError):
                cycle.disconnected = True  # uvicorn's rule: later sends are dropped
                transport.close()
                return
            except TimeoutError:
                log.info("%s: the client took no bytes for %ss; closing", message.get("path", "sendfile"), args[-1])
                transport.close()
                raise StalledReaderError(f"client stopped reading for {args[-1]}s") from None
            cycle.expected_content_length -= count

        return zerocopy_send

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


def _sendfile_all(sock: int, fd: int, offset: int, count: int, timeout: float) -> None:
    """``os.sendfile`` ``count`` bytes of ``fd`` from ``offset`` to the non-blocking socket ``sock``,
    waiting (``poll``) while its buffer is full, at most ``timeout`` seconds at a time (0: no limit).

    Raises:
        TimeoutError: the socket took no byte for ``timeout`` seconds.
        OSError: the file ended early (``EIO``) or the socket failed (the client left: ``EPIPE``...).
    """
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    wait_ms = int(timeout * 1000) if timeout > 0 else -1
    while count > 0:
        try:
            n = os.sendfile(sock, fd, offset, count)
        except BlockingIOError:
            if not poller.poll(wait_ms):
                raise TimeoutError from None
            continue
        if n == 0:
            raise OSError(5, f"the file ended {count} bytes before the length sent")
        offset += n
        count -= n


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
        """uvicorn's httptools protocol, closing connections whose request head does not arrive in time,
        with zero-copy file bodies (``ZEROCOPY``)."""

        zerocopy = True

    _BASE: type[_HeadTimeout] = HeadTimeoutHttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is the fallback
    _BASE = HeadTimeoutH11Protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` from ``settings`` (timeouts, budgets)."""
    per_server = {
        "head_timeout": settings.read_timeout,
        "per_client": settings.max_client_connections,
        "max_connections": settings.max_connections,
        "write_timeout": settings.write_timeout,
    }
    protocol = type(_BASE.__name__, (_BASE,), per_server | {"client_connections": {}, "probation": [0]})
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,  # checked by the protocol, health exempt
        "timeout_graceful_shutdown": settings.shutdown_timeout,
        "proxy_headers": False,
    }
