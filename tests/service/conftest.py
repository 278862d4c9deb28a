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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test run (migrated to head), dropped at the end."""
    from service.storage import migrate
    from tests.service._backends import fresh_postgres_database

    with fresh_postgres_database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def postgres(postgres_url: str) -> str:
    """The run's database, emptied for this test."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE tag_files, base_files, base_names, files, tags, bundles, bases"))
    engine.dispose()
    return postgres_url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from tests.service._backends import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new empty bucket on the session's S3 server."""
    from tests.service._backends import new_bucket

    return new_bucket(s3_endpoint)


@pytest.fixture(params=["sqlite+file", "postgres+s3"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for each store implementation: the embedded default, and PostgreSQL + S3 (moto)."""
    if request.param == "sqlite+file":
        return Settings(data_dir=tmp_path / "data", redis_url=None, api_tokens=None)
    pg, endpoint = request.getfixturevalue("postgres"), request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=None,
        api_tokens=None,
        database_url=pg,
        blob_url=f"s3://{bucket}/mcnc",
        s3_endpoint_url=endpoint,
        s3_multipart_bytes=5 << 20,
    )
