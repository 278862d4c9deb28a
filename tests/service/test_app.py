"""Envelope on every error, health, metrics, OpenAPI, settings defaults, exported names."""

from __future__ import annotations

import pytest

import service
from service.config import Settings, default_data_dir
from tests.service._helpers import error_code


def test_all_is_sorted_and_exported():
    assert service.__all__ == sorted(service.__all__)
    for name in service.__all__:
        assert hasattr(service, name)


def test_router_404_and_405_use_the_envelope(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and error_code(r) == "not_found" and "detail" not in r.json()
    r = client.put("/bundles")
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"


def test_health(client):
    assert client.get("/health/live").json() == {"status": "ok"}
    r = client.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["checks"] == {"storage": "ok", "device": "cpu", "redis": "off"}


def test_ready_is_503_when_storage_breaks(client, settings):
    client.app.state.store.close()  # the database is gone
    r = client.get("/health/ready")
    assert r.status_code == 503 and r.headers["x-error-code"] == "not_ready"
    assert r.json()["checks"]["storage"].startswith("error")
    r = client.get("/models/m")  # requests that need the store: 503 in the envelope, not a 500
    assert r.status_code == 503 and error_code(r) == "storage_unavailable"


def test_metrics_count_routes_and_bytes(client, tiny):
    client.post("/bundles", params={"name": "m"}, content=tiny.data)
    body = client.get("/models/m/weights").content
    text = client.get("/metrics").text
    assert 'mcnc_requests_total{method="GET",route="/models/{ref}/weights",status="200"} 1.0' in text
    assert f'mcnc_bytes_out_total{{route="/models/{{ref}}/weights"}} {float(len(body))}' in text
    assert 'mcnc_reconstructions_total{kind="full"} 1.0' in text
    assert "mcnc_reconstruction_seconds_count" in text and "mcnc_redis_errors_total 0.0" in text


def test_openapi_lists_routes_and_error_codes(client):
    spec = client.get("/openapi.json").json()
    for path in ("/bundles", "/bundles/{ref}", "/models", "/models/{ref}", "/models/{ref}/weights", "/bases"):
        assert path in spec["paths"]
    assert "invalid_bundle" in str(spec)


def test_settings_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "mcnc"
    for var in ("MCNC_HOST", "MCNC_PORT", "MCNC_DATA_DIR", "MCNC_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert (s.host, s.port, s.data_dir, s.redis_url) == ("127.0.0.1", 8000, tmp_path / "mcnc", None)
    monkeypatch.setenv("MCNC_REDIS_URL", "")
    assert Settings().redis_url is None
    monkeypatch.setenv("MCNC_DEVICE", "tpu")
    with pytest.raises(ValueError):
        Settings()


def test_module_level_app_for_uvicorn(monkeypatch, tmp_path):
    import service.main as main_module
    from service.config import get_settings

    monkeypatch.setenv("MCNC_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        app = main_module.app
        assert app.state.settings.data_dir == tmp_path and main_module.app is app
    finally:
        get_settings.cache_clear()
        vars(main_module).pop("app", None)
