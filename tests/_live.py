"""A live uvicorn server on 127.0.0.1 (ephemeral port) in a background thread, for real-HTTP tests."""

from __future__ import annotations

import re
import socket
import threading
import time

import httpx
import uvicorn

from service import Settings, create_app
from service.http_server import uvicorn_options


class LiveServer:
    """``with LiveServer(settings) as srv: srv.url``; stops and joins on exit."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says so; socket.socket() has proto 0, and Nagle + delayed ACK then add ~40 ms per response.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", **uvicorn_options(settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def requests(self, route: str, method: str = "GET") -> int:
        """Requests the server counted for ``route`` (its template, e.g. ``/bundles/{ref}``), any status."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        pattern = re.compile(r"^mcnc_requests_total\{(.*)\} ([0-9.e+]+)$", re.M)
        total = 0.0
        for labels, value in pattern.findall(text):
            if f'route="{route}"' in labels and f'method="{method}"' in labels:
                total += float(value)
        return int(total)
