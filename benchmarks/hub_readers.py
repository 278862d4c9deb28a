"""The readers of ``registry_fleet.py``: ``huggingface_hub`` 2.5's ``snapshot_download`` requests (and plain
static GETs for nginx) on keep-alive connections, ``n`` threads over one queue of repos.

Two clients: ``SocketConn`` (raw socket, bodies over 1 MiB counted into a reused buffer, not kept: the
least client CPU per byte, so the servers are what is measured) and ``HttpxConn`` (one
``httpx.Client``, what huggingface_hub 2.x itself uses). Both return ``(status, headers, body, bytes)``.
"""

from __future__ import annotations

import json
import queue
import socket
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks.serving import tree_cpu

BUF = 1 << 20


class SocketConn:
    """HTTP/1.1 keep-alive on a raw socket; bodies up to 1 MiB are returned, longer ones only counted."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = memoryview(bytearray(BUF))

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes, int]:
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: mcnc-fleet\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            n = self.sock.recv_into(self.buf)
            if n == 0:
                raise ConnectionError("closed in the headers")
            head += bytes(self.buf[:n])
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        keep = length <= BUF
        body, got = (rest if keep else b""), len(rest)
        while got < length:
            n = self.sock.recv_into(self.buf, min(BUF, length - got))
            if n == 0:
                raise ConnectionError("closed in the body")
            if keep:
                body += bytes(self.buf[:n])
            got += n
        return int(lines[0].split()[1]), headers, body, got

    def close(self) -> None:
        self.sock.close()


class HttpxConn:
    """The same requests through one ``httpx.Client`` (what huggingface_hub 2.x uses), bodies streamed."""

    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes, int]:
        with self.client.stream(method, path) as r:
            if int(r.headers.get("content-length", "0")) <= BUF:
                body = r.read()
                return r.status_code, dict(r.headers), body, len(body)
            got = sum(len(piece) for piece in r.iter_raw(BUF))
            return r.status_code, dict(r.headers), b"", got

    def close(self) -> None:
        self.client.close()


def _ok(status: int, what: str) -> None:
    if status != 200:
        raise ConnectionError(f"{what}: HTTP {status}")


def fetch_hub(conn: SocketConn | HttpxConn, name: str) -> int:
    """snapshot_download's requests for ``name`` (huggingface_hub 2.5): bytes of the files."""
    status, _, body, _ = conn.request("GET", f"/api/models/{name}/revision/main")
    _ok(status, "model_info")
    sha = json.loads(body)["sha"]
    status, _, body, _ = conn.request("GET", f"/api/models/{name}/tree/{sha}?recursive=true&expand=false")
    _ok(status, "tree")
    total = 0
    for f in json.loads(body):
        url = f"/{name}/resolve/{sha}/{f['path']}"
        status, headers, _, _ = conn.request("HEAD", url)
        _ok(status, "HEAD")
        status, _, _, got = conn.request("GET", url)
        _ok(status, "GET")
        if got != f["size"] or int(headers["content-length"]) != got:
            raise ConnectionError(f"{url}: {got} bytes, the tree says {f['size']}")
        total += got
    return total


def fetch_static(files: list[str]) -> Callable[[SocketConn | HttpxConn, str], int]:
    def fetch(conn: SocketConn | HttpxConn, name: str) -> int:
        total = 0
        for f in files:
            status, _, _, got = conn.request("GET", f"/{name}/{f}")
            _ok(status, f"GET {f}")
            total += got
        return total

    return fetch


def readers(port: int, pid: int, jobs: list[str], n: int, fetch: Callable, client: str) -> dict[str, Any]:
    """``n`` reader threads (one connection each) take ``jobs`` from one queue: adapters/s, p50/p99 of
    one adapter's fetch, bytes, errors, server CPU seconds per adapter."""
    q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    for j in jobs:
        q.put(j)
    for _ in range(n):
        q.put(None)
    lat: list[float] = []
    nbytes, errors = [0], []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)
    conn_cls = SocketConn if client == "socket" else HttpxConn

    def worker() -> None:
        conn = conn_cls(port)
        start.wait()
        try:
            while (name := q.get()) is not None:
                t0 = time.perf_counter()
                try:
                    got = fetch(conn, name)
                except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
                    with lock:
                        errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = conn_cls(port)
                    continue
                with lock:
                    lat.append(time.perf_counter() - t0)
                    nbytes[0] += got
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    cpu0, cli0 = tree_cpu(pid), time.process_time()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    cpu, cli = tree_cpu(pid) - cpu0, time.process_time() - cli0
    lat.sort()
    done = max(len(lat), 1)
    return {
        "adapters": len(lat), "seconds": secs, "adapters_per_s": len(lat) / secs, "bytes": nbytes[0],
        "p50_ms": 1e3 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "server_cpu_ms_per_adapter": 1e3 * cpu / done, "client_cpu_ms_per_adapter": 1e3 * cli / done,
        "errors": len(errors), "first_error": errors[0] if errors else None,
    }  # fmt: skip


def request_breakdown(port: int, name: str, repeats: int) -> dict[str, float]:
    """Median ms of each request of one warm hub fetch, alone on one connection (no concurrency)."""
    conn = SocketConn(port)
    times: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, _, body, _ = conn.request("GET", f"/api/models/{name}/revision/main")
            sha = json.loads(body)["sha"]
            t1 = time.perf_counter()
            _, _, body, _ = conn.request("GET", f"/api/models/{name}/tree/{sha}?recursive=true&expand=false")
            t2 = time.perf_counter()
            times.setdefault("model_info", []).append(t1 - t0)
            times.setdefault("tree", []).append(t2 - t1)
            for f in json.loads(body):
                for method in ("HEAD", "GET"):
                    t0 = time.perf_counter()
                    conn.request(method, f"/{name}/resolve/{sha}/{f['path']}")
                    times.setdefault(f"{method} {f['path']}", []).append(time.perf_counter() - t0)
    finally:
        conn.close()
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}
