"""Two ``mcnc serve`` processes on loopback sharing PostgreSQL + S3 (moto) + Redis behave as one server:
push through one and pull (local and server-side) through the other, tag moves seen at once, 16 cold
requests over both reconstruct once, kill -9 during a large upload leaves nothing partial anywhere
and the other keeps serving, and the rate limit holds across both."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import pytest
import sqlalchemy as sa
import torch
from safetensors.torch import load_file, save

import client
import mcnc_core as m

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
RATE, BURST = 1, 60  # at most 60 requests of one token in any 60 s, over both servers together
TOKENS = '{"main": ["read", "write", "admin"], "limited": ["read"]}'
MAIN, LIMITED = {"Authorization": "Bearer main"}, {"Authorization": "Bearer limited"}


class Replica:
    """``mcnc serve`` as a process on a free loopback port."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mcnc_core", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.proc.stdout.read().decode() if self.proc.stdout else ""
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mcnc serve did not come up"
            time.sleep(0.1)

    def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith(f"{name}{{{want}}} " if labels else f"{name} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def cluster(tmp_path, postgres, s3_endpoint, s3_bucket, redis_url) -> Iterator[tuple[Replica, Replica, dict]]:
    url, prefix = redis_url
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
    env.update(
        PYTHONPATH=str(ROOT), MCNC_DATABASE_URL=postgres, MCNC_BLOB_URL=f"s3://{s3_bucket}/mcnc",
        MCNC_S3_ENDPOINT_URL=s3_endpoint, MCNC_S3_MULTIPART_BYTES=str(5 << 20), MCNC_REDIS_URL=url,
        MCNC_REDIS_PREFIX=prefix, MCNC_RATE_LIMIT=str(RATE), MCNC_RATE_LIMIT_BURST=str(BURST), MCNC_API_TOKENS=TOKENS,
    )  # fmt: skip
    a = Replica(env, tmp_path / "a")
    try:
        b = Replica(env, tmp_path / "b")
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b, {"database_url": postgres, "bucket": s3_bucket, "endpoint": s3_endpoint}
    finally:
        a.stop()
        b.stop()


def _bundle(seed: int, hidden: int) -> bytes:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16))
    return m.export_bundle(net).to_bytes()


def _s3_keys(shared: dict) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=shared["endpoint"])
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=shared["bucket"]).get("Contents", []))


def test_two_replicas_behave_as_one(cluster, tmp_path):
    a, b, shared = cluster
    v1, v2 = _bundle(0, 256), _bundle(1, 320)
    opts = {"token": "main", "timeout": 120}
    with (
        client.Client(a.url, cache_dir=tmp_path / "ca", **opts) as ca,
        client.Client(b.url, cache_dir=tmp_path / "cb", **opts) as cb,
    ):
        ca.push(v1, name="acme/mlp", tag="v1")
        local = cb.load("acme/mlp:v1")  # the bundle from b, reconstructed here
        cb.download_weights("acme/mlp:v1", tmp_path / "server.safetensors")  # reconstructed by b
        served = load_file(tmp_path / "server.safetensors")
        assert served.keys() == local.keys()
        for k in local:
            torch.testing.assert_close(served[k], local[k])
        # a tag moved on one is seen by the other at once
        ca.push(v2, name="acme/mlp", tag="v1")
        assert cb.info("acme/mlp:v1").digest == "sha256:" + hashlib.sha256(v2).hexdigest()

    # 16 cold requests (v2's weights) spread over both: exactly one reconstruction in the cluster
    def rebuilds() -> tuple[float, float]:
        full = sum(r.metric("mcnc_reconstructions_total", kind="full") for r in (a, b))
        return full, sum(r.metric("mcnc_reconstructions_total", kind="partial") for r in (a, b))

    before = rebuilds()

    def weights(i: int) -> httpx.Response:
        return httpx.get(f"{(a, b)[i % 2].url}/models/acme/mlp:v1/weights", headers=MAIN, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(weights, range(16)))
    assert {r.status_code for r in bodies} == {200} and len({r.content for r in bodies}) == 1
    after = rebuilds()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)

    # the rate limit holds across replicas: one token's requests alternate between them
    codes = [httpx.get(f"{(a, b)[i % 2].url}/models", headers=LIMITED).status_code for i in range(2 * BURST)]
    assert codes.count(200) == BURST and set(codes) == {200, 429}
    assert 429 in codes[0::2] and 429 in codes[1::2]  # both servers refused: they count together

    # kill -9 of a replica while it stores a large base in S3 (multipart): nothing partial anywhere
    keys_before = _s3_keys(shared)
    base = save({"w": torch.randn(4096, 4096)})  # 64 MiB: 13 parts of 5 MiB
    s3 = boto3.client("s3", endpoint_url=shared["endpoint"])
    result: dict[str, object] = {}

    def upload() -> None:
        try:
            result["status"] = httpx.post(f"{a.url}/bases", content=base, headers=MAIN, timeout=120).status_code
        except httpx.TransportError as exc:
            result["error"] = exc

    sender = threading.Thread(target=upload)
    sender.start()
    deadline = time.monotonic() + 60
    while not s3.list_multipart_uploads(Bucket=shared["bucket"]).get("Uploads"):
        assert "status" not in result, f"the upload finished ({result}) before it could be interrupted"
        assert time.monotonic() < deadline, "no multipart upload started"
        time.sleep(0.005)
    os.kill(a.proc.pid, signal.SIGKILL)
    sender.join(timeout=60)
    assert "error" in result  # the client saw the connection die
    assert _s3_keys(shared) == keys_before  # no object, complete or partial, is listed
    engine = sa.create_engine(shared["database_url"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bases")).scalar_one() == 0
    engine.dispose()
    r = httpx.get(f"{b.url}/models/acme/mlp:v1/weights", headers=MAIN, timeout=60)  # the other keeps serving
    assert r.status_code == 200 and r.content == bodies[0].content
    assert httpx.post(f"{b.url}/bases", content=base, headers=MAIN, timeout=120).status_code == 201
