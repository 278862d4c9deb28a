"""Regressions of the attack on the landed server (issue 11): generator bombs are refused before
anything is built (D1, D11), memory is bounded before any status line (D2), and the single-flight
job never waits on its readers (D3)."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import mcnc_core as m
import service.engine as eng
from service import Settings, create_app
from tests._live import LiveServer
from tests.service._helpers import error_code, load_st

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lopsided() -> m.Bundle:
    """Small first tensors, then one of 1.6 MB: a 1 MB memory tier caches the first ones only."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 50_000))
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16))
    return m.export_bundle(net)


def test_readers_served_from_tier_1_do_not_stall_the_job(tmp_path, lopsided):
    """Tier 1 held the model's first tensors but not all: a reader took those from tier 1 and never
    told the job, whose backpressure then waited 30 s on it (240 GETs: 545 s instead of ~4 s)."""
    settings = Settings(data_dir=tmp_path, memory_cache_bytes=1 << 20)
    want = m.reconstruct(lopsided)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/bundles", params={"name": "m"}, content=lopsided.to_bytes()).status_code == 201
        first = c.get("/models/m/weights")  # fills tier 1 with all but the big tensor
        assert first.status_code == 200
        for _ in range(3):
            t0 = time.monotonic()
            r = c.get("/models/m/weights")  # a job for the big tensor; the rest from tier 1
            assert r.status_code == 200 and r.content == first.content
            assert time.monotonic() - t0 < 5
    got = load_st(first.content)
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_a_reader_that_stops_does_not_slow_the_others(tmp_path, lopsided, monkeypatch):
    """One paused reader must cost only its own stream: the job drops it past its window (it then
    rebuilds what it still needs itself) instead of waiting on it with a reconstruction slot held."""
    monkeypatch.setattr(eng, "_JOB_WINDOW_MIN", 0, raising=False)  # (absent before the fix)
    settings = Settings(data_dir=tmp_path, memory_cache_bytes=0, max_concurrent_reconstructions=1)
    with TestClient(create_app(settings)) as c:
        digest = c.post("/bundles", content=lopsided.to_bytes()).json()["id"]
        engine: eng.Engine = c.app.state.engine  # type: ignore[attr-defined]
        bundle = c.app.state.catalog.bundle(digest)  # type: ignore[attr-defined]
        lay = engine.layout(digest, bundle, "native")
        slow = engine.stream(lay, bundle, 0, lay.total)
        head = [bytes(next(slow)), bytes(next(slow))]  # the header, then the first tensor: subscribed
        fast_body: list[bytes] = []
        fast = threading.Thread(
            target=lambda: fast_body.extend(bytes(p) for p in engine.stream(lay, bundle, 0, lay.total))
        )
        fast.start()
        fast.join(timeout=10)
        assert not fast.is_alive(), "a reader waited on another reader that stopped reading"
        rest = [bytes(p) for p in slow]  # the paused reader resumes and still gets the right bytes
    assert b"".join(head + rest) == b"".join(fast_body)
    want = m.reconstruct(lopsided)
    got = load_st(b"".join(fast_body))
    assert all(torch.equal(got[k], v) for k, v in want.items())


def _one_big_tensor(rows: int, cols: int) -> bytes:
    """A few KB declaring one ``rows x cols`` tensor (rank-1 factors: the codes stay tiny)."""
    net = nn.Linear(cols, rows, bias=False)
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16, rank=1))
    return m.export_bundle(net).to_bytes()


def test_a_tensor_over_the_memory_budget_is_refused_at_upload(tmp_path):
    """D2: a 13 KB bundle declaring one [40000, 40000] tensor was stored (201), and its first GET sent
    a 200 and 256 bytes before the server was OOM-killed. Now the upload is refused, naming the limit."""
    data = _one_big_tensor(4096, 4096)  # 64 MiB of float32, 192 MiB of working set
    assert len(data) < 64 << 10
    settings = Settings(data_dir=tmp_path, reconstruction_memory_bytes=64 << 20)
    with TestClient(create_app(settings)) as c:
        r = c.post("/bundles", content=data)
        assert r.status_code == 422 and error_code(r) == "limit_exceeded", r.text
        assert "MCNC_RECONSTRUCTION_MEMORY_BYTES" in r.json()["error"]["message"]
        assert c.get("/models").json()["total"] == 0


def test_a_stored_tensor_over_a_lowered_budget_is_507_before_any_byte(tmp_path):
    """A bundle stored under a larger budget: its weights answer 507 before the status line, not a 200
    followed by an OOM."""
    data = _one_big_tensor(4096, 4096)
    with TestClient(create_app(Settings(data_dir=tmp_path))) as c:
        assert c.post("/bundles", params={"name": "big"}, content=data).status_code == 201
    settings = Settings(data_dir=tmp_path, reconstruction_memory_bytes=64 << 20)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for method in ("GET", "HEAD"):
            r = c.request(method, "/models/big/weights")
            assert r.status_code == 507, r.status_code
        r = c.get("/models/big/weights")
        assert error_code(r) == "insufficient_memory"
        assert "MCNC_RECONSTRUCTION_MEMORY_BYTES" in r.json()["error"]["message"]
        assert c.get(f"/bundles/sha256:{hashlib.sha256(data).hexdigest()}").content == data  # the file still is


def _with_generator(data: bytes, **fields: int) -> bytes:
    """The bundle with ``fields`` changed in its generator and config metadata (hash left stale)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header["__metadata__"]
    for key in ("generator", "config"):
        obj = json.loads(meta[key])
        obj.update(fields)
        meta[key] = json.dumps(obj)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n :]


@pytest.mark.parametrize(
    ("fields", "limit"),
    [
        ({"chunk_size": 2**20, "width": 64}, "max_generator_numel"),  # D1: 7-19 s and +256 MB per upload
        ({"chunk_size": 4096, "width": 8192, "depth": 1}, "max_generator_numel"),  # the spec's widest: one killed it
        ({"chunk_size": 4096, "width": 2048, "depth": 1}, "max_generator_macs"),  # D11: 127 s of Gram matrix
    ],
)
def test_generator_bombs_are_refused_before_anything_is_built(tmp_path, fields, limit, monkeypatch):
    from mcnc_core import generator

    def refuse(spec: object) -> None:
        raise AssertionError(f"the server built a generator ({spec}) before refusing it")

    monkeypatch.setattr(generator, "build_generator_weights", refuse)
    net = nn.Linear(16, 16)
    m.compress(net, m.MCNCConfig(chunk_size=256, k=4, width=16))
    bomb = _with_generator(m.export_bundle(net).to_bytes(), **fields)
    assert len(bomb) < 8 << 10
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        for _ in range(3):
            t0 = time.monotonic()
            r = c.post("/bundles", content=bomb, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 422 and error_code(r) == "limit_exceeded", r.text
            assert limit in r.json()["error"]["message"]
            assert time.monotonic() - t0 < 2
        assert c.get("/models").json()["total"] == 0
