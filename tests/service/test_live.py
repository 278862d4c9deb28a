"""Against a live uvicorn on 127.0.0.1 (ephemeral port): streaming, resume, single flight under load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import mcnc_core as m
import service.reconstructor as eng
from service import Settings
from tests._live import LiveServer
from tests.service._helpers import load_st, served_reconstructions

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path, max_concurrent_reconstructions=2)) as srv:
        yield srv


def test_upload_stream_and_resume_over_http(live, tiny):
    with httpx.Client(base_url=live.url, timeout=10) as c:
        assert c.get("/health/live").status_code == 200
        assert c.post("/bundles", params={"name": "m"}, content=tiny.data).status_code == 201
        with c.stream("GET", "/models/m/weights") as r:
            assert r.status_code == 200 and r.headers["content-length"]
            first = r.read()
        assert len(first) == int(r.headers["content-length"])
        got = load_st(first)
        for name, t in m.reconstruct(tiny.bundle).items():
            assert torch.equal(got[name], t), name
        etag = r.headers["etag"]
        # an interrupted download resumed with Range + If-Range-like ETag check
        cut = len(first) // 2
        rest = c.get("/models/m/weights", headers={"Range": f"bytes={cut}-"})
        assert rest.status_code == 206 and rest.headers["etag"] == etag
        assert first[:cut] + rest.content == first
        assert c.get("/models/m/weights", headers={"If-None-Match": etag}).status_code == 304
        assert c.get("/bundles/m").content == tiny.data


@pytest.mark.parametrize("memory_budget", [1 << 30, 0], ids=["cached", "uncached"])
def test_single_flight_n_concurrent_cold_requests(tmp_path, tiny, memory_budget, monkeypatch):
    calls: list[object] = []
    real = eng.iter_reconstruct

    def slow(*args, **kwargs):  # makes the cold requests overlap for sure
        calls.append(kwargs.get("names"))
        time.sleep(0.3)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(eng, "iter_reconstruct", slow)
    settings = Settings(data_dir=tmp_path, memory_cache_bytes=memory_budget)
    n = 8
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        c.post("/bundles", params={"name": "m"}, content=tiny.data)
        assert calls == [None]  # the upload's check against the fingerprint
        calls.clear()
        barrier = threading.Barrier(n)

        def fetch(_: int) -> tuple[int, bytes]:
            barrier.wait()
            r = c.get("/models/m/weights")
            return r.status_code, r.content

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(fetch, range(n)))
        assert {s for s, _ in results} == {200}
        assert len({body for _, body in results}) == 1
        assert calls == [None]  # exactly one reconstruction, of the whole model
        assert served_reconstructions(srv.app) == 1
        metrics = c.get("/metrics").text
        assert 'mcnc_reconstructions_total{kind="full"} 1.0' in metrics
        assert 'mcnc_reconstructions_total{kind="partial"}' not in metrics
        want = m.reconstruct(tiny.bundle)
        got = load_st(results[0][1])
        assert all(torch.equal(got[k], v) for k, v in want.items())


def test_32_concurrent_clients_zero_errors(live, tiny, tiny2):
    with httpx.Client(base_url=live.url, timeout=30) as c:
        c.post("/bundles", params={"name": "a"}, content=tiny.data)
        c.post("/bundles", params={"name": "b"}, content=tiny2.data)
        refs = ["a", "b"] * 16

        def fetch(ref: str) -> int:
            return c.get(f"/models/{ref}/weights", params={"dtype": "float16"}).status_code

        with ThreadPoolExecutor(32) as pool:
            assert set(pool.map(fetch, refs)) == {200}
        assert served_reconstructions(live.app) == 2


def test_client_disconnect_leaves_the_job_at_once(tmp_path, tiny2, monkeypatch):
    real = eng.iter_reconstruct

    def slow(*args, **kwargs):
        for item in real(*args, **kwargs):
            time.sleep(0.3)
            yield item

    monkeypatch.setattr(eng, "iter_reconstruct", slow)
    with LiveServer(Settings(data_dir=tmp_path, memory_cache_bytes=0)) as srv:
        engine = srv.app.state.engine
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            c.post("/bundles", params={"name": "m"}, content=tiny2.data)
            with c.stream("GET", "/models/m/weights") as r:
                assert next(r.iter_raw())  # the header arrived; now hang up
        deadline = time.monotonic() + 1.0
        while any(job.subs for job in list(engine._jobs.values())):
            assert time.monotonic() < deadline, "the disconnected client is still subscribed"
            time.sleep(0.02)
        with httpx.Client(base_url=srv.url, timeout=30) as c:  # and the server still serves
            assert c.get("/models/m/weights").status_code == 200


def test_concurrent_identical_uploads_store_once(tmp_path, tiny):
    # One client may hold max_client_uploads uploads at once (4 by default): admit all eight here,
    # this test is about single storage, not about the per-client cap (test below).
    settings = Settings(data_dir=tmp_path, max_concurrent_reconstructions=2, max_client_uploads=8)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/bundles", content=tiny.data).status_code, range(8)))
        assert sorted(codes) == [200] * 7 + [201]
        tmp_files = list((live.app.state.settings.data_dir / "tmp").iterdir())
        assert tmp_files == []


def test_concurrent_uploads_over_the_client_cap_get_429_and_store_once(live, tiny):
    # Under the default cap some of eight simultaneous uploads may be refused; whatever is refused is
    # a 429 (never a 500), exactly one is stored (201), and nothing is left in staging.
    with httpx.Client(base_url=live.url, timeout=30) as c:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: c.post("/bundles", content=tiny.data), range(8)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 201, 429} and codes.count(201) == 1, codes
        for r in answers:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "too_many_client_uploads" and r.headers["retry-after"]
        assert list((live.app.state.settings.data_dir / "tmp").iterdir()) == []
