"""Error codes -> exceptions (one table), retries with backoff, 429 Retry-After; offline transport."""

from __future__ import annotations

import inspect
import json
import sys

import httpx
import pytest

import client
from client import _exceptions as ex


def envelope(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "request_id": "r1"}}
    return httpx.Response(status, json=body, headers={"X-Error-Code": code, **(headers or {})})


@pytest.mark.parametrize(("code", "status", "cls"), [(c, 400, cls) for c, cls in ex._ERROR_CODES.items()])
def test_every_code_in_the_table_maps_to_its_class(code, status, cls, tmp_path):
    transport = httpx.MockTransport(lambda r: envelope(status, code))
    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(cls) as info:
        c.info("x")
    assert info.value.code == code and info.value.request_id == "r1" and "happened" in str(info.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(404, client.NotFoundError), (401, client.AuthenticationError), (418, client.APIError), (502, client.ServerError)],
)
def test_unknown_codes_fall_back_on_the_status(status, cls, tmp_path):
    transport = httpx.MockTransport(lambda r: httpx.Response(status, text="<html>proxy error</html>"))
    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(cls, match=f"{status} http_{status}: <html>proxy error"):
        c.info("x")


def test_503_and_connection_errors_are_retried_then_succeed(tmp_path, monkeypatch):
    monkeypatch.setattr("client._sync.time.sleep", lambda s: None)
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return envelope(503, "busy_loading")
        return httpx.Response(200, json={"items": [], "total": 0, "limit": 100, "offset": 0})

    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=httpx.MockTransport(handler), progress=False)
    assert c.list() == [] and len(calls) == 3


def test_retries_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("client._sync.time.sleep", lambda s: None)
    transport = httpx.MockTransport(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=transport, retries=2, progress=False)
    with pytest.raises(client.ConnectionFailedError, match="cannot reach http://mcnc.test"):
        c.list()


def test_429_honours_retry_after(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr("client._sync.time.sleep", slept.append)
    responses = iter([envelope(429, "rate_limited", {"Retry-After": "7"}),
                      httpx.Response(200, json={"items": [], "total": 0, "limit": 1, "offset": 0})])  # fmt: skip
    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=httpx.MockTransport(lambda r: next(responses)),
                      progress=False)  # fmt: skip
    c.list()
    assert slept == [7.0]
    transport = httpx.MockTransport(lambda r: envelope(429, "rate_limited", {"Retry-After": "3"}))
    c2 = client.Client("http://mcnc.test", cache_dir=tmp_path, retries=0, progress=False, transport=transport)
    with pytest.raises(client.RateLimitError) as info:
        c2.list()
    assert info.value.retry_after == 3.0


def test_400_is_not_retried(tmp_path):
    calls = []

    def handler(request):
        calls.append(1)
        return envelope(422, "invalid_bundle")

    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=httpx.MockTransport(handler), progress=False)
    with pytest.raises(client.InvalidBundleError):
        c.push(b"not a bundle")
    assert len(calls) == 1


def test_token_is_sent_as_bearer_and_env_wins_over_file(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("MCNC_HOME", str(tmp_path))
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"items": [], "total": 0, "limit": 1, "offset": 0})

    client.Client("http://t", transport=httpx.MockTransport(handler), progress=False).list()
    monkeypatch.setenv("MCNC_TOKEN", "from-env")
    client.Client("http://t", transport=httpx.MockTransport(handler), progress=False).list()
    assert seen == ["Bearer from-file", "Bearer from-env"]


def test_invalid_refs_are_refused_before_any_request(tmp_path):
    c = client.Client("http://t", cache_dir=tmp_path, transport=httpx.MockTransport(lambda r: 1 / 0), progress=False)
    with pytest.raises(ValueError, match=r"invalid name '\.\./etc/passwd'"):
        c.info("../etc/passwd")


def _public(cls) -> dict[str, inspect.Signature]:
    return {n: inspect.signature(f) for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_sync_and_async_clients_expose_the_same_methods():
    sync, asyn = _public(client.Client), _public(client.AsyncClient)
    assert sorted(sync) == sorted(asyn)
    for name in sync:
        assert str(sync[name]).replace("AsyncBaseTransport", "BaseTransport") == str(asyn[name]).replace(
            "AsyncBaseTransport", "BaseTransport"), name  # fmt: skip
        assert inspect.getdoc(getattr(client.Client, name)) == inspect.getdoc(getattr(client.AsyncClient, name)), name
        if name not in ("close",):
            assert inspect.iscoroutinefunction(getattr(client.AsyncClient, name)) or name in ("close",), name
    assert inspect.iscoroutinefunction(client.AsyncClient.close)


def test_import_client_does_not_import_torch():
    import subprocess

    code = "import client, sys; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_public_names_are_sorted_and_exported():
    assert client.__all__ == sorted(client.__all__)
    assert all(hasattr(client, n) for n in client.__all__)
    assert json.dumps(sorted(client.__all__))  # plain strings


def test_401_and_403_say_how_to_pass_a_token(tmp_path, monkeypatch):
    monkeypatch.setenv("MCNC_HOME", str(tmp_path))
    monkeypatch.delenv("MCNC_TOKEN", raising=False)
    transport = httpx.MockTransport(lambda r: envelope(401, "unauthorized"))
    c = client.Client("http://t", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(client.AuthenticationError, match="no token was sent; pass a token: MCNC_TOKEN=<token>"):
        c.list()
    monkeypatch.setenv("MCNC_TOKEN", "t0k")
    c = client.Client("http://t", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(client.AuthenticationError, match="refused the token from MCNC_TOKEN"):
        c.list()
    transport = httpx.MockTransport(lambda r: envelope(403, "forbidden"))
    c = client.Client("http://t", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(client.PermissionDeniedError, match="lacks the scope .*'admin'"):
        c.delete("mlp")


@pytest.mark.parametrize("failure", ["refused", "502"])
def test_unreachable_server_falls_back_on_the_cached_ref_at_once(tmp_path, failure, bundles):
    data = bundles.full.to_bytes()
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if failure == "refused":
            raise httpx.ConnectError("refused")
        return envelope(502, "bad_gateway")

    c = client.Client("http://t", cache_dir=tmp_path, transport=httpx.MockTransport(handler), progress=False)
    digest = c.cache.put_bytes(data)
    c.cache.write_ref("mlp", "v1", digest)
    with pytest.warns(client.CacheFallbackWarning, match=r"using the cached mlp:v1 \(sha256:"):
        state = c.load("mlp:v1")
    assert set(state) == {e.name for e in bundles.full.manifest}
    assert calls == ["/models/mlp:v1"]  # one try, no retries: the cache answers
    with pytest.raises(client.ConnectionFailedError if failure == "refused" else client.ServerError):
        c.load("mlp:v2")  # not cached: the server's failure stands


def test_415_maps_to_its_class(tmp_path):
    transport = httpx.MockTransport(lambda r: envelope(415, "unsupported_media_type"))
    c = client.Client("http://t", cache_dir=tmp_path, transport=transport, retries=0, progress=False)
    with pytest.raises(client.UnsupportedMediaTypeError):
        c.push(b"x")


def test_library_failures_are_client_errors(tmp_path, bundles):
    c = client.Client("http://t", cache_dir=tmp_path, offline=True, progress=False)
    digest = c.cache.put_bytes(bundles.full.to_bytes())
    with pytest.raises(client.InvalidArgumentError, match="dtype must be one of") as info:
        c.load(digest, dtype="float64")
    assert isinstance(info.value, client.MCNCClientError) and isinstance(info.value, ValueError)


def test_404_hint_finds_the_tags_beyond_the_first_page(tmp_path):
    others = [{"name": f"m{i:04d}", "tag": "latest", "digest": "sha256:" + "0" * 64} for i in range(1000)]
    pages = {0: others, 1000: [{"name": "mlp", "tag": "v1", "digest": "sha256:" + "1" * 64}]}

    def handler(request):
        if request.url.path == "/models":
            offset = int(request.url.params["offset"])
            return httpx.Response(200, json={"items": pages[offset], "total": 1001, "limit": 1000, "offset": offset})
        return envelope(404, "model_not_found")

    c = client.Client("http://t", cache_dir=tmp_path, transport=httpx.MockTransport(handler), progress=False)
    with pytest.raises(client.ModelNotFoundError, match=r"did you mean mlp:v1\?"):
        c.load("mlp")
