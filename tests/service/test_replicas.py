"""Two servers sharing PostgreSQL + S3 (moto) + Redis behave as one (in-process apps; the process-level
version with ``mcnc serve`` is tests/e2e/test_replicas.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from tests.service._helpers import error_code, metric

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


@pytest.fixture
def replicas(tmp_path, postgres, s3_endpoint, s3_bucket, redis_url) -> Iterator[tuple[TestClient, TestClient]]:
    url, prefix = redis_url
    shared = dict(
        database_url=postgres, blob_url=f"s3://{s3_bucket}/m", s3_endpoint_url=s3_endpoint, redis_url=url,
        redis_prefix=prefix, api_tokens=None,
    )  # fmt: skip
    a = TestClient(create_app(Settings(data_dir=tmp_path / "a", **shared)))
    b = TestClient(create_app(Settings(data_dir=tmp_path / "b", **shared)))
    with a, b:
        yield a, b


def test_push_on_one_pull_on_the_other(replicas, tiny, tiny2, delta):
    a, b = replicas
    assert a.post("/bundles", params={"name": "m", "tag": "v1"}, content=tiny.data).status_code == 201
    assert b.post("/bundles", params={"name": "m", "tag": "v1"}, content=tiny.data).status_code == 200  # same bytes
    assert b.get("/bundles/m:v1").content == tiny.data
    assert b.get("/bundles/m:v1", headers={"Range": "bytes=10-19"}).content == tiny.data[10:20]
    weights = b.get("/models/m:v1/weights")
    assert weights.status_code == 200 and a.get("/models/m:v1/weights").content == weights.content
    # a delta's base registered through one server is used by the other (downloaded to its local cache)
    assert a.post("/bases", content=delta.base_file).status_code == 201
    assert a.post("/bundles", params={"name": "d"}, content=delta.data).status_code == 201
    assert b.get("/models/d/weights").status_code == 200
    assert b.get(f"/bases/{delta.bundle.base.sha256}").content == delta.base_file
    # a tag moved on one is seen by the other at once
    assert a.post("/bundles", params={"name": "m", "tag": "v1"}, content=tiny2.data).status_code == 201
    moved = hashlib.sha256(tiny2.data).hexdigest()
    assert b.get("/models/m:v1").json()["id"] == moved
    assert b.get("/bundles/m:v1").headers["x-mcnc-bundle-digest"] == f"sha256:{moved}"


def test_concurrent_cold_requests_over_both_reconstruct_once(replicas, tiny2):
    a, b = replicas
    a.post("/bundles", params={"name": "m"}, content=tiny2.data)
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda i: (a, b)[i % 2].get("/models/m/weights").content, range(16)))
    assert len(set(bodies)) == 1 and len(bodies[0]) > tiny2.bundle.reconstructed_nbytes
    full = sum(metric(c, "mcnc_reconstructions_total", kind="full") for c in (a, b))
    partial = sum(metric(c, "mcnc_reconstructions_total", kind="partial") for c in (a, b))
    assert (full, partial) == (1, 0)


def test_delete_on_one_is_seen_by_the_other_and_frees_tier_2(replicas, tiny):
    a, b = replicas
    digest = a.post("/bundles", params={"name": "m"}, content=tiny.data).json()["id"]
    b.get("/models/m/weights")
    held = metric(b, "mcnc_cache_bytes", tier="redis")
    assert held > 0
    assert a.delete(f"/bundles/{digest}", params={"force": "true"}).status_code == 204
    assert metric(a, "mcnc_cache_bytes", tier="redis") == 0  # the shared budget, read back from Redis
    for path in ("/bundles/m", "/models/m/weights", f"/bundles/{digest}", f"/models/{digest}/weights"):
        r = b.get(path)
        assert r.status_code == 404 and error_code(r) in ("bundle_not_found", "model_not_found"), path
