"""A scripted, hostile HTTP/1.1 server on loopback: each route answers exactly the bytes a test writes.

Real sockets, real ``httpx`` parsing on the client side, and nothing a well-behaved framework would
refuse to send: bodies longer than declared, truncated chunked bodies, drips, huge declarations.
Every response closes its connection. ``sent[path]`` counts the body bytes the server managed to
hand to the kernel before the client hung up (loopback buffers hold a few MiB of them).
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

Route = Callable[["Responder"], None]
BLOCK = 64 << 10


class Responder:
    """What a route writes with: a status line and headers, then a body in one of several ways."""

    def __init__(self, sock: socket.socket, server: Hostile, path: str) -> None:
        self.sock, self.server, self.path = sock, server, path

    def _send(self, data: bytes, *, body: bool = True) -> bool:
        try:
            self.sock.sendall(data)
        except OSError:  # the client hung up: what a capped client should do
            return False
        if body:
            with self.server.lock:
                self.server.sent[self.path] = self.server.sent.get(self.path, 0) + len(data)
        return True

    def head(self, status: int, headers: dict[str, str] | None = None) -> bool:
        lines = [f"HTTP/1.1 {status} X", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return self._send(("\r\n".join(lines) + "\r\n\r\n").encode(), body=False)

    def body(self, parts: Iterable[bytes], *, pause: float = 0.0) -> None:
        """Raw body bytes (the connection's end is the body's end when no length was declared)."""
        for part in parts:
            if not self._send(part):
                return
            if pause:
                time.sleep(pause)

    def chunked(self, parts: Iterable[bytes], *, terminate: bool = True) -> None:
        """A chunked body; ``terminate`` ends it properly (``0`` chunk) whatever it held."""
        for part in parts:
            if not self._send(b"%x\r\n%s\r\n" % (len(part), part)):
                return
        if terminate:
            self._send(b"0\r\n\r\n", body=False)

    def json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        self.head(status, {"Content-Type": "application/json", "Content-Length": str(len(raw)), **(headers or {})})
        self.body([raw])


def serve(body: bytes, headers: dict[str, str] | None = None) -> Route:
    """A route answering 200 with ``body`` (``Content-Length`` unless ``headers`` say chunked)."""

    def route(r: Responder) -> None:
        if (headers or {}).get("Transfer-Encoding") == "chunked":
            r.head(200, headers)
            r.chunked([body])
        else:
            r.head(200, {"Content-Length": str(len(body)), **(headers or {})})
            r.body([body])

    return route


def answer(data: Any) -> Route:
    """A route answering 200 with ``data`` as JSON."""
    return lambda r: r.json(data)


def repeat(block: bytes, total: int) -> Iterable[bytes]:
    """``total`` bytes of ``block`` repeated, in ``BLOCK`` pieces (never held at once)."""
    piece = (block * (BLOCK // len(block) + 1))[:BLOCK]
    for start in range(0, total, BLOCK):
        yield piece[: min(BLOCK, total - start)]


class Hostile:
    """``with Hostile() as h: h.routes["/models/x"] = lambda r: r.json({...}); h.url``."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.sent: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.active = 0
        hostile = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with hostile.lock:
                    hostile.active += 1
                try:
                    hostile._serve(self.request)
                finally:
                    with hostile.lock:
                        hostile.active -= 1

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _serve(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return
            data += more
        path = data.split(b" ", 2)[1].decode().split("?", 1)[0]
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        responder = Responder(sock, self, path)
        if route is None:
            responder.json({"error": {"code": "not_found", "message": f"no route {path}"}}, 404)
        else:
            route(responder)

    def idle(self, timeout: float = 10.0) -> None:
        """Wait until every handler has returned (so ``sent`` is final)."""
        end = time.monotonic() + timeout
        while self.active and time.monotonic() < end:
            time.sleep(0.01)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
