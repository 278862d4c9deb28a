"""Regressions of issue 19 N3 and N8 over real loopback HTTP: health checks answer whatever holds the
connections, one client cannot take every upload slot, and staging is held for bytes received, not
declared. Clients on other loopback addresses (127.0.0.x) stand for other hosts."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from service import Settings
from tests._live import LiveServer
from tests.service._helpers import error_code

OCTET = {"Content-Type": "application/octet-stream"}
MiB = 1 << 20


def _connect(srv: LiveServer, source: str = "127.0.0.1") -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))


def _slow_heads(srv: LiveServer, stack: ExitStack, count: int, source: str = "127.0.0.1") -> None:
    """``count`` connections that send half a request head, then nothing (slowloris)."""
    for _ in range(count):
        sock = stack.enter_context(_connect(srv, source))
        sock.sendall(b"GET /models HTTP/1.1\r\nHost: 127")


@contextmanager
def _client(source: str) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5) as c:
        yield c


def _stall_upload(srv: LiveServer, stack: ExitStack, declared: int, sent: int, source: str = "127.0.0.1") -> None:
    """A connection that sent an upload's head and ``sent`` bytes of its ``declared`` body, then stalls."""
    sock = stack.enter_context(_connect(srv, source))
    head = (
        "POST /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * sent)


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _timed_get(c: httpx.Client, url: str) -> tuple[int, float]:
    start = time.monotonic()
    r = c.get(url)
    return r.status_code, time.monotonic() - start


def test_n8_health_answers_while_one_client_floods_slow_heads(tmp_path):
    """1,000 slow heads from one client made /health/live fail 20/20: the cap refused the prober's
    connection as it opened, before its path was known. Now the decision waits for the head."""
    settings = Settings(data_dir=tmp_path, max_connections=32, max_client_connections=8, read_timeout=30)
    with LiveServer(settings) as srv, ExitStack() as stack:
        _slow_heads(srv, stack, 300)
        time.sleep(0.3)  # accepted: 8 count toward the client's cap, the rest are on probation
        for source in ("127.0.0.1", "127.0.0.2"):  # the flooding client's own address, and another's
            with _client(source) as c:
                for path in ("/health/live", "/health/ready"):
                    for _ in range(5):
                        status, took = _timed_get(c, f"{srv.url}{path}")
                        assert status == 200 and took < 1.0, (source, path, status, took)
        with _client("127.0.0.2") as other:  # the others keep their connections
            assert other.get(f"{srv.url}/models").status_code == 200
        with _client("127.0.0.1") as flooder:
            r = flooder.get(f"{srv.url}/models")
            assert r.status_code == 503 and error_code(r) == "too_many_connections", r.text
            assert "MCNC_MAX_CLIENT_CONNECTIONS" in r.json()["error"]["message"] and r.headers["retry-after"]


def test_n8_health_answers_when_every_connection_is_taken(tmp_path):
    """Many clients, each within its own cap, holding all of MCNC_MAX_CONNECTIONS: uvicorn's
    limit_concurrency answered /health/live 503 too. Health paths are exempt; other paths still 503."""
    settings = Settings(data_dir=tmp_path, max_connections=16, max_client_connections=4, read_timeout=30)
    with LiveServer(settings) as srv, ExitStack() as stack:
        for i in range(2, 8):  # 6 clients x 4 slow heads = 24 connections, over the 16
            _slow_heads(srv, stack, 4, source=f"127.0.0.{i}")
        time.sleep(0.3)
        with _client("127.0.0.9") as c:
            for path in ("/health/live", "/health/ready"):
                status, took = _timed_get(c, f"{srv.url}{path}")
                assert status == 200 and took < 1.0, (path, status, took)
            assert c.get(f"{srv.url}/models").status_code == 503  # the connection cap itself still holds


def test_n8_a_silent_connection_over_the_client_cap_is_told_why_and_closed(tmp_path):
    settings = Settings(data_dir=tmp_path, max_client_connections=2, read_timeout=30)
    with LiveServer(settings) as srv, ExitStack() as stack:
        _slow_heads(srv, stack, 2)
        start = time.monotonic()
        with _connect(srv) as third:
            answer = b""
            while chunk := third.recv(65536):
                answer += chunk
        assert time.monotonic() - start < 5  # PROBATION_HEAD_TIMEOUT, not MCNC_READ_TIMEOUT
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"


def test_n8_one_client_cannot_take_every_upload_slot(tmp_path, tiny):
    settings = Settings(data_dir=tmp_path, max_concurrent_uploads=8, max_client_uploads=2, read_timeout=10)
    with LiveServer(settings) as srv, ExitStack() as stack:
        for _ in range(2):
            _stall_upload(srv, stack, declared=1000, sent=10)
        _wait(lambda: srv.app.state.uploads.uploads == 2)
        with _client("127.0.0.1") as same:
            r = same.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET)
            assert r.status_code == 429 and error_code(r) == "too_many_client_uploads", r.text
            assert "MCNC_MAX_CLIENT_UPLOADS" in r.json()["error"]["message"] and r.headers["retry-after"]
        with _client("127.0.0.2") as other:
            assert other.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET).status_code == 201
    assert srv.app.state.uploads.by_client == {}


def test_n3_declared_sizes_do_not_reserve_staging(tmp_path, tiny):
    """4 connections declaring 1 GiB and sending slowly made 9/9 normal uploads get 507: staging was
    reserved on the declared Content-Length. Now only bytes received are held."""
    settings = Settings(data_dir=tmp_path, staging_bytes=8 * MiB, max_upload_bytes=64 * MiB, read_timeout=10)
    with LiveServer(settings) as srv, ExitStack() as stack:
        for _ in range(4):
            _stall_upload(srv, stack, declared=4 * MiB, sent=100)
        _wait(lambda: srv.app.state.uploads.uploads == 4)
        with _client("127.0.0.2") as other:
            for name in ("a", "b", "c"):
                r = other.post(f"{srv.url}/bundles", params={"name": name}, content=tiny.data, headers=OCTET)
                assert r.status_code in (200, 201), r.text  # 201 stored, then 200 (same bytes, new name)
            big = other.post(f"{srv.url}/bundles", content=b"x" * (9 * MiB), headers=OCTET)
            assert big.status_code == 507 and "MCNC_STAGING_BYTES" in big.json()["error"]["message"]  # never fits
        assert srv.app.state.uploads.staged == 0  # the stalled ones have sent less than a buffer


def _post_until_answered(srv: LiveServer, source: str, declared: int) -> bytes:
    """Send an upload of ``declared`` bytes in small pieces, stopping as soon as the server answers."""
    with _connect(srv, source) as sock:
        head = (
            "POST /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode())
        sent, piece = 0, b"y" * (64 << 10)
        while sent < declared:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(piece[: declared - sent])
            sent += len(piece)
        answer = b""
        sock.settimeout(10)
        while b"}}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        return answer


def test_n3_staging_still_never_exceeds_its_budget(tmp_path):
    """Reserved as bytes arrive: an upload that really runs the budget out gets 507 mid-body."""
    settings = Settings(data_dir=tmp_path, staging_bytes=3 * MiB, max_upload_bytes=64 * MiB, read_timeout=10)
    with LiveServer(settings) as srv, ExitStack() as stack:
        _stall_upload(srv, stack, declared=3 * MiB, sent=5 * MiB // 2)  # 2 MiB or more staged, then stalls
        _wait(lambda: srv.app.state.uploads.staged >= 2 * MiB)
        answer = _post_until_answered(srv, "127.0.0.2", 3 * MiB)
        assert answer.startswith(b"HTTP/1.1 507 "), answer[:300]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "staging_full"
        assert srv.app.state.uploads.staged <= 3 * MiB
        assert len(list((tmp_path / "tmp").glob("upload-*"))) == 1  # only the stalled one's


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_n8_health_on_probation_keeps_its_connection(tmp_path, path):
    """A prober over its client's cap may reuse its connection for more health checks."""
    settings = Settings(data_dir=tmp_path, max_client_connections=1, read_timeout=30)
    with LiveServer(settings) as srv, ExitStack() as stack:
        _slow_heads(srv, stack, 1)
        with _client("127.0.0.1") as c:
            assert [c.get(f"{srv.url}{path}").status_code for _ in range(3)] == [200, 200, 200]
