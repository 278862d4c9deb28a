"""Fixtures for the service tests: seeded tiny bundles, settings on tmp_path, a TestClient, Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from torch import nn

import mcnc_core as m
from service import Settings, create_app

REDIS_URL = os.environ.get("MCNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass(frozen=True)
class BundleCase:
    data: bytes
    bundle: m.Bundle
    base: dict[str, torch.Tensor] | None = None
    base_file: bytes | None = None


def _tiny_mlp(seed: int, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="session")
def tiny() -> BundleCase:
    net = _tiny_mlp(0)
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16))
    b = m.export_bundle(net)
    return BundleCase(b.to_bytes(), b)


@pytest.fixture(scope="session")
def tiny2() -> BundleCase:
    """A second, different full bundle (a bigger hidden layer)."""
    net = _tiny_mlp(1, hidden=96)
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16))
    b = m.export_bundle(net)
    return BundleCase(b.to_bytes(), b)


@pytest.fixture(scope="session")
def delta() -> BundleCase:
    net = _tiny_mlp(2)
    m.compress(net, m.MCNCConfig(mode="delta", base_name="tiny-base", chunk_size=256, k=4, width=16))
    b = m.export_bundle(net)
    base = {k: v.contiguous() for k, v in m.base_state_dict(net).items()}
    return BundleCase(b.to_bytes(), b, base, save(base))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", redis_url=None, api_tokens=None)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def redis_url() -> Iterator[tuple[str, str]]:
    """``(url, prefix)`` on the shared Redis (DB 15); skips when absent; deletes only our prefix."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"mcnc-test-{uuid.uuid4().hex[:8]}:"
    yield REDIS_URL, prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
