"""Tokens and scopes, public read, the loopback rule, rate limiting."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.errors import InsecureBindError
from tests.service._helpers import error_code

TOKENS = {"r-token": ["read"], "w-token": ["write"], "a-token": ["admin"]}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path, api_tokens=json.dumps(TOKENS)))) as c:
        yield c


def test_scopes(secured, tiny):
    c = secured
    r = c.post("/bundles", params={"name": "m"}, content=tiny.data)
    assert r.status_code == 401 and error_code(r) == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    r = c.post("/bundles", content=tiny.data, headers=_auth("r-token"))
    assert r.status_code == 403 and error_code(r) == "forbidden"
    r = c.post("/bundles", params={"name": "m"}, content=tiny.data, headers=_auth("nope"))
    assert r.status_code == 401 and error_code(r) == "unauthorized"
    digest = c.post("/bundles", params={"name": "m"}, content=tiny.data, headers=_auth("w-token")).json()["id"]
    for path in ("/models", "/models/m", "/models/m/weights", "/bundles/m"):
        assert c.get(path).status_code == 401
        assert c.get(path, headers=_auth("r-token")).status_code == 200
        assert c.get(path, headers=_auth("w-token")).status_code == 200  # write implies read
    assert c.get("/models", headers={"Authorization": "Basic r-token"}).status_code == 401
    assert c.delete("/models/m", headers=_auth("w-token")).status_code == 403
    assert c.delete(f"/bundles/{digest}", headers=_auth("w-token")).status_code == 403
    assert c.delete(f"/bundles/{digest}", params={"force": "true"}, headers=_auth("a-token")).status_code == 204
    # health and metrics stay open for probes
    assert c.get("/health/live").status_code == 200
    assert c.get("/metrics").status_code == 200


def test_public_read(tmp_path, tiny):
    s = Settings(data_dir=tmp_path, api_tokens=json.dumps(TOKENS), public_read=True)
    with TestClient(create_app(s)) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data, headers=_auth("w-token"))
        assert c.get("/models/m/weights").status_code == 200
        assert c.post("/bundles", content=tiny.data).status_code == 401


def test_tokens_from_a_file(tmp_path, tiny):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    with TestClient(create_app(Settings(data_dir=tmp_path / "d", api_tokens=str(path)))) as c:
        assert c.get("/models").status_code == 401
        assert c.get("/models", headers=_auth("r-token")).status_code == 200


@pytest.mark.parametrize("bad", ['{"t": ["root"]}', '["t"]', "{not json", '{"t": "read"}'])
def test_malformed_tokens_refuse_to_start(tmp_path, bad):
    with pytest.raises(ValueError, match="MCNC_API_TOKENS"):
        create_app(Settings(data_dir=tmp_path, api_tokens=bad))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "::", "example.com"])
def test_non_loopback_without_tokens_is_refused(tmp_path, host):
    with pytest.raises(InsecureBindError, match="MCNC_ALLOW_INSECURE"):
        create_app(Settings(data_dir=tmp_path, host=host))
    create_app(Settings(data_dir=tmp_path, host=host, allow_insecure=True))
    create_app(Settings(data_dir=tmp_path, host=host, api_tokens=json.dumps(TOKENS)))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_loopback_without_tokens_is_fine(tmp_path, host):
    create_app(Settings(data_dir=tmp_path, host=host))


def test_allow_insecure_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MCNC_HOST", "0.0.0.0")
    monkeypatch.setenv("MCNC_DATA_DIR", str(tmp_path))
    with pytest.raises(InsecureBindError):
        create_app(Settings())
    monkeypatch.setenv("MCNC_ALLOW_INSECURE", "yes")
    assert Settings().allow_insecure is True
    create_app(Settings())


def test_rate_limit_per_token(tmp_path):
    s = Settings(data_dir=tmp_path, api_tokens=json.dumps(TOKENS), rate_limit=0.5, rate_limit_burst=3)
    with TestClient(create_app(s)) as c:
        codes = [c.get("/models", headers=_auth("r-token")).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/models", headers=_auth("r-token"))
        assert r.status_code == 429 and error_code(r) == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1 and "RateLimit-Policy" in r.headers and "RateLimit" in r.headers
        assert c.get("/models", headers=_auth("w-token")).status_code == 200  # separate bucket
