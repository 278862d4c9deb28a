"""Assertion helpers shared by the service tests."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient


def error_code(response: object) -> str:
    """The envelope's code, checking it matches ``X-Error-Code``."""
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}, body
    code = body["error"]["code"]
    assert response.headers["x-error-code"] == code  # type: ignore[attr-defined]
    assert body["error"]["message"]
    return str(code)


def metric(client: TestClient, name: str, **labels: str) -> float:
    """A sample's value from the app's Prometheus registry (0 when absent)."""
    value = client.app.state.metrics.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]
    return float(value or 0.0)


def served_reconstructions(app: object) -> int:
    """Reconstructions run to serve weights (full jobs and partial rebuilds), read from the app's
    Prometheus counter ``mcnc_reconstructions_total`` (verification and adapter exports not counted)."""
    registry = app.state.metrics.registry  # type: ignore[attr-defined]
    return int(
        sum(registry.get_sample_value("mcnc_reconstructions_total", {"kind": k}) or 0 for k in ("full", "partial"))
    )


def load_st(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)
