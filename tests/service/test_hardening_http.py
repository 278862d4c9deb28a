"""HTTP-layer hardening (issue #11): Host/Origin/content-type rules (D6), slow clients and budgets
(D8), paginated tags (D9), conformance (D13). Most run a live uvicorn on loopback."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mcnc_core.errors import ManifestError
from mcnc_core.manifest import BaseRef
from mcnc_core.refs import parse_ref
from service import Settings, create_app
from tests._live import LiveServer
from tests.service._helpers import error_code

OCTET = {"Content-Type": "application/octet-stream"}


def _open(srv: LiveServer) -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _stall_upload(srv: LiveServer, declared: int = 1000) -> socket.socket:
    """A connection that sent an upload's head and 10 bytes of its body, then stalls."""
    sock = _open(srv)
    head = (
        f"POST /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b"x" * 10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


# D6: Host, Origin and content type ---------------------------------------------------------------


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path, allowed_hosts="mcnc.internal, [fd00::1]")) as srv:
        yield srv


def test_loopback_server_without_tokens_refuses_foreign_host_names(live, tiny):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        assert c.post("/bundles", params={"name": "m"}, content=tiny.data, headers=OCTET).status_code == 201
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.:80", ""):
            for method in ("GET", "DELETE"):
                r = c.request(method, "/models/m", headers={"Host": host})
                assert r.status_code == 403 and error_code(r) == "host_not_allowed", (host, method)
                assert "MCNC_ALLOWED_HOSTS" in r.json()["error"]["message"]
        assert c.get("/models/m").status_code == 200  # nothing was deleted
        for host in ("localhost", "LOCALHOST:8000", "127.0.0.1:1", "[::1]:8000", "mcnc.internal:443", "[fd00::1]"):
            assert c.get("/models/m", headers={"Host": host}).status_code == 200, host


def test_with_tokens_any_host_reaches_the_token_check(tmp_path):
    settings = Settings(data_dir=tmp_path, api_tokens=json.dumps({"t": ["admin"]}))
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        r = c.get("/models", headers={"Host": "mcnc.example.com"})
        assert r.status_code == 401 and error_code(r) == "unauthorized"
        assert c.get("/models", headers={"Host": "mcnc.example.com", "Authorization": "Bearer t"}).status_code == 200


def test_cross_site_writes_are_refused(live, tiny):
    own = live.url
    with httpx.Client(base_url=live.url, timeout=10) as c:
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1", f"https://{own[7:]}", "junk:"):
            r = c.post("/bundles", params={"name": "m"}, content=tiny.data, headers={**OCTET, "Origin": origin})
            assert r.status_code == 403 and error_code(r) == "cross_origin", origin
        assert c.get("/models").json()["total"] == 0  # nothing was stored
        r = c.post("/bundles", params={"name": "m"}, content=tiny.data, headers={**OCTET, "Origin": own})
        assert r.status_code == 201  # the server's own pages (e.g. /docs) may write
        digest = r.json()["id"]
        assert c.get("/models/m", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: Host rule
        r = c.delete(f"/bundles/{digest}", params={"force": "true"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and error_code(r) == "cross_origin"
        assert c.delete(f"/bundles/{digest}", params={"force": "true"}).status_code == 204  # no Origin: a client


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
@pytest.mark.parametrize(("path", "what"), [("/bundles?name=m", "bundle file"), ("/bases", "safetensors file")])
def test_uploads_need_octet_stream(client, tiny, content_type, path, what):
    """What a page can POST cross-site without a preflight (and curl --data-binary's default) is refused."""
    r = client.post(path, content=tiny.data, headers={"Content-Type": content_type})
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    message = r.json()["error"]["message"]
    assert f"send the {what} itself" in message and "Content-Type: application/octet-stream" in message
    assert client.get("/models").json()["total"] == 0


def test_uploads_as_octet_stream_or_without_a_type_are_read(client, tiny):
    assert client.post("/bundles", content=tiny.data, headers=OCTET).status_code == 201
    assert client.post("/bundles", content=tiny.data).status_code == 200  # no Content-Type (httpx's default)


def test_content_type_rule_holds_with_tokens(tmp_path, tiny):
    settings = Settings(data_dir=tmp_path, api_tokens=json.dumps({"t": ["admin"]}))
    with TestClient(create_app(settings)) as c:
        headers = {"Authorization": "Bearer t", "Content-Type": "text/plain"}
        r = c.post("/bundles", content=tiny.data, headers=headers)
        assert r.status_code == 415 and error_code(r) == "unsupported_media_type"


# D8: slow clients, connection and disk budgets, shutdown ---------------------------------------------


def test_stalled_upload_body_gets_408_and_leaves_no_temp_file(tmp_path):
    with LiveServer(Settings(data_dir=tmp_path, read_timeout=0.5)) as srv:
        start = time.monotonic()
        with _stall_upload(srv) as sock:
            answer = _read_all(sock)
        assert time.monotonic() - start < 4
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_timeout" and "MCNC_READ_TIMEOUT" in body["error"]["message"]
        _wait(lambda: srv.app.state.uploads.uploads == 0)
        assert srv.app.state.uploads.staged == 0
        assert not list((tmp_path / "tmp").glob("upload-*"))


def test_an_upload_dripping_inside_the_read_timeout_is_cut_at_its_deadline(tmp_path):
    """N3: a byte every few seconds (each pause inside MCNC_READ_TIMEOUT) used to hold its slot for good."""
    with LiveServer(Settings(data_dir=tmp_path, read_timeout=30, upload_deadline=1.0)) as srv:
        start = time.monotonic()
        with _stall_upload(srv) as sock:
            sock.settimeout(0.25)
            answer = b""
            while time.monotonic() - start < 6:
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
                if b"}}" in answer:  # the whole error body (the server may still drain the connection)
                    break
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert 0.9 < time.monotonic() - start < 6
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["code"] == "request_timeout" and "MCNC_UPLOAD_DEADLINE" in body["error"]["message"]
        _wait(lambda: srv.app.state.uploads.uploads == 0)  # its slot and staging space are free again
        assert srv.app.state.uploads.staged == 0
        assert not list((tmp_path / "tmp").glob("upload-*"))


@pytest.mark.parametrize("sent", [b"", b"GET /health/live HTTP/1.1\r\nHost: 127"], ids=["silent", "partial-head"])
def test_connections_without_a_complete_request_head_are_closed(tmp_path, sent):
    with LiveServer(Settings(data_dir=tmp_path, read_timeout=0.5)) as srv:
        start = time.monotonic()
        with _open(srv) as sock:
            sock.sendall(sent)
            assert _read_all(sock) == b""  # closed by the server (a socket.timeout here: left open)
        assert time.monotonic() - start < 4


def test_idle_keep_alive_connections_are_closed(tmp_path):
    with LiveServer(Settings(data_dir=tmp_path, keep_alive_timeout=0.3, read_timeout=30)) as srv, _open(srv) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b" 200 " in _read_all(sock)  # the answer, then the close (not after 30 s)


def test_connection_budget_answers_503(tmp_path):
    with LiveServer(Settings(data_dir=tmp_path, max_connections=2)) as srv:
        idle = [_open(srv), _open(srv)]
        try:
            time.sleep(0.2)  # accepted
            assert httpx.get(f"{srv.url}/models", timeout=5).status_code == 503
            assert httpx.get(f"{srv.url}/health/live", timeout=5).status_code == 200  # probes exempt (N8)
        finally:
            for sock in idle:
                sock.close()
        _wait(lambda: httpx.get(f"{srv.url}/models", timeout=5).status_code == 200)


def test_one_client_cannot_take_the_connection_budget_from_the_others(tmp_path):
    """N8: one client's sockets used to take all of MCNC_MAX_CONNECTIONS (others' /health/live 503)."""
    with LiveServer(Settings(data_dir=tmp_path, max_connections=6, max_client_connections=3)) as srv:
        held = [_open(srv) for _ in range(3)]
        try:
            time.sleep(0.2)  # accepted
            with _open(srv) as fourth:
                answer = _read_all(fourth)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            body = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert "MCNC_MAX_CLIENT_CONNECTIONS" in body["error"]["message"]
            other = httpx.HTTPTransport(local_address="127.0.0.2")  # another client, on loopback too
            with httpx.Client(transport=other, timeout=5) as c:
                assert c.get(f"{srv.url}/health/live").status_code == 200
        finally:
            for sock in held:
                sock.close()
        _wait(lambda: httpx.get(f"{srv.url}/health/live", timeout=5).status_code == 200)  # its own cap freed


def test_concurrent_upload_budget_answers_503_with_retry_after(tmp_path, tiny):
    with LiveServer(Settings(data_dir=tmp_path, max_concurrent_uploads=1, read_timeout=10)) as srv:
        with _stall_upload(srv):
            _wait(lambda: srv.app.state.uploads.uploads == 1)
            r = httpx.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET, timeout=5)
            assert r.status_code == 503 and error_code(r) == "too_many_uploads" and r.headers["retry-after"]
            assert "MCNC_MAX_CONCURRENT_UPLOADS" in r.json()["error"]["message"]
        _wait(lambda: srv.app.state.uploads.uploads == 0)
        assert httpx.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET, timeout=5).status_code == 201


def test_staging_disk_budget_answers_507_before_writing_past_it(tmp_path, tiny):
    held = 1 << 20  # what the stalled upload has sent: one buffer, written to staging
    budget = held + len(tiny.data) - 1
    with LiveServer(Settings(data_dir=tmp_path, staging_bytes=budget, read_timeout=10)) as srv:
        with _stall_upload(srv, declared=budget) as sock:  # reserved as its bytes arrive (N3)
            sock.sendall(b"x" * (held - 10))
            _wait(lambda: srv.app.state.uploads.staged == held)
            r = httpx.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET, timeout=5)
            assert r.status_code == 507 and error_code(r) == "staging_full" and r.headers["retry-after"]
            assert "MCNC_STAGING_BYTES" in r.json()["error"]["message"]
            chunked = httpx.post(f"{srv.url}/bundles", content=iter([tiny.data]), headers=OCTET, timeout=5)
            assert "content-length" not in chunked.request.headers and chunked.status_code == 507
            assert len(list((tmp_path / "tmp").glob("upload-*"))) == 1  # only the stalled one's
        _wait(lambda: srv.app.state.uploads.staged == 0)
        assert httpx.post(f"{srv.url}/bundles", content=tiny.data, headers=OCTET, timeout=5).status_code == 201


def test_shutdown_has_a_deadline_with_a_stalled_upload(tmp_path):
    srv = LiveServer(Settings(data_dir=tmp_path, shutdown_timeout=0.5, read_timeout=60))
    with srv, _stall_upload(srv):
        _wait(lambda: srv.app.state.uploads.uploads == 1)
        start = time.monotonic()
        srv.server.should_exit = True  # what SIGTERM does
        srv.thread.join(timeout=5)
        assert not srv.thread.is_alive() and time.monotonic() - start < 4


# D13: conformance -----------------------------------------------------------------------------------


def test_digests_with_a_trailing_newline_are_refused():
    good = "a" * 64
    assert BaseRef.from_json({"name": None, "sha256": good}).sha256 == good
    with pytest.raises(ManifestError, match="64 lowercase hex"):
        BaseRef.from_json({"name": None, "sha256": good + "\n"})
    with pytest.raises(ValueError, match="not a sha256 digest"):
        from client._cache import LocalCache

        LocalCache(Path("/nonexistent")).blob(good + "\n")


def test_405_lists_every_method_of_the_path(client, tiny):
    digest = client.post("/bundles", content=tiny.data).json()["id"]
    r = client.put(f"/bundles/{digest}")
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"DELETE", "GET", "HEAD"}
    r = client.delete("/health/live")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_openapi_metrics_is_prometheus_text_and_path_parameters_carry_patterns(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    params = {
        (path, method, p["name"]): p["schema"].get("pattern")
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", [])
        if p["in"] == "path" and not path.startswith(("/api/", "/{repo_id}"))  # Hub routes: the Hub's grammar
    }
    assert ("/bases/{digest}", "get", "digest") in params
    missing = {k for k, pattern in params.items() if not pattern}
    assert not missing, missing
    ref = params[("/bundles/{ref}", "get", "ref")]
    for good in ("m", "acme/m:v1", "sha256:" + "a" * 64, "a" * 64):
        assert re.fullmatch(ref, good) and parse_ref(good)
    for bad in ("a/b/c", "name:", ":tag", "-x", "sha256:xyz"):
        assert not re.fullmatch(ref, bad)


def test_allow_insecure_logs_a_warning_when_it_permits_the_bind(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mcnc.service"):
        create_app(Settings(data_dir=tmp_path, host="0.0.0.0", allow_insecure=True))
    assert any(r.levelno == logging.WARNING and "INSECURE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mcnc.service"):
        create_app(Settings(data_dir=tmp_path, allow_insecure=True))  # loopback: nothing to warn about
        create_app(Settings(data_dir=tmp_path, host="0.0.0.0", api_tokens='{"t": ["read"]}', allow_insecure=True))
    assert not [r for r in caplog.records if "INSECURE" in r.getMessage()]


# D9: a bundle's tags are paginated -------------------------------------------------------------------


def _add_tags(client: TestClient, digest: str, n: int) -> None:
    from service.storage.schema import tags

    with client.app.state.store.meta.engine.begin() as conn:  # type: ignore[attr-defined]
        rows = [{"name": f"n{i:04d}", "tag": "t", "digest": digest, "updated_at": 0.0} for i in range(n)]
        conn.execute(tags.insert(), rows)


def test_a_bundle_record_lists_its_first_tags_and_pages_through_the_rest(client, tiny):
    from sqlalchemy import event

    digest = client.post("/bundles", params={"name": "m"}, content=tiny.data).json()["id"]
    _add_tags(client, digest, 250)
    statements: list[str] = []
    engine = client.app.state.store.meta.engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731  (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        for record in (client.get("/models/m").json(), client.post("/bundles", content=tiny.data).json()):
            assert len(record["tags"]) == 100 and record["tag_count"] == 251 and record["tags_truncated"] is True
            assert record["tags"][0]["name"] == "m" and record["tags"][-1]["name"] == "n0098"
        names = []
        for offset in range(0, 300, 100):
            page = client.get("/models", params={"digest": f"sha256:{digest}", "offset": offset, "limit": 100}).json()
            assert page["total"] == 251 and page["offset"] == offset
            names += [t["name"] for t in page["items"]]
        assert names == ["m"] + [f"n{i:04d}" for i in range(250)]
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    tag_reads = [s for s in statements if "FROM tags" in s and "WHERE tags.digest" in s and "count(" not in s.lower()]
    assert tag_reads and all("LIMIT" in s for s in tag_reads), tag_reads  # never every tag at once
    small = client.post("/bundles", content=tiny.data, params={"name": "only"}).json()
    assert small["tag_count"] == 252 and small["tags_truncated"] is True


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"digest": "m"}, 400),
        ({"digest": "sha256:xyz"}, 400),
        ({"offset": 2**63}, 422),
        ({"offset": -1}, 422),
        ({"limit": 0}, 422),
        ({"limit": 10**6}, 422),
        ({"digest": "a" * 64, "offset": 2**31 - 1}, 200),
    ],
)
def test_tag_pages_are_bounded(client, params, status):
    r = client.get("/models", params=params)
    assert r.status_code == status, r.text
    if status != 200:
        assert error_code(r) == "invalid_request"
    else:
        assert r.json()["items"] == [] and r.json()["total"] == 0


def test_a_reader_that_stops_reading_is_cut_and_frees_its_reconstruction(tmp_path, caplog):
    """A client that sends a GET for weights and never reads kept its stream, the reconstruction
    behind it and its admission place for as long as the socket lived (34 such clients and every
    cold request answered 429). Now a body piece not taken within MCNC_WRITE_TIMEOUT ends it."""
    import logging
    import socket

    from torch import nn

    import mcnc_core as m

    torch_net = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])  # 50 MB of float32 weights
    m.compress(torch_net, m.MCNCConfig(chunk_size=1024, k=4, width=16))
    data = m.export_bundle(torch_net).to_bytes()
    settings = Settings(data_dir=tmp_path, write_timeout=1.0)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/bundles", params={"name": "big"}, content=data).status_code == 201
        engine = srv.app.state.reconstructor
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            # A range (not the whole body): the stream rebuilds its tensors itself, no shared job.
            sock.sendall(b"GET /models/big/weights HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=1-\r\n\r\n")
            time.sleep(0.5)
            assert engine._pending == 1  # reconstructing for a client that reads nothing
            with caplog.at_level(logging.INFO, logger="mcnc.service"):
                deadline = time.monotonic() + 15
                while engine._pending and time.monotonic() < deadline:
                    time.sleep(0.1)
            assert engine._pending == 0, "the stalled stream still holds its reconstruction"
            sock.settimeout(5)
            received = 0
            try:  # the server closed the connection: what is buffered, then EOF (or a reset)
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except (ConnectionResetError, TimeoutError):
                pass
            assert received < 50_000_000
        assert "took no bytes" in caplog.text
        assert c.get("/models/big/weights").status_code == 200  # others are served as before
