"""The server on a CUDA engine (runs where a GPU is: benchmarks/gpu_check.sh): weights streamed over
real HTTP equal the CUDA reconstruction bit for bit and the CPU's within the fingerprint tolerance,
and tier 1 holds host tensors (a stream never copies from the GPU)."""

from __future__ import annotations

import httpx
import pytest
import torch

import mcnc_core as m
from service import Settings
from tests._live import LiveServer
from tests.service._helpers import load_st

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("dtype", ["native", "float16"])
def test_server_streams_from_a_cuda_engine(tmp_path, tiny, tiny2, dtype):
    settings = Settings(data_dir=tmp_path, device="cuda")
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        engine = srv.app.state.engine
        assert isinstance(engine.backend, m.CUDABackend)
        assert engine.profile.startswith("cuda/")
        for case in (tiny, tiny2):
            digest = c.post("/bundles", content=case.data).json()["id"]
            r = c.get(f"/models/sha256:{digest}/weights", params={"dtype": dtype})
            assert r.status_code == 200 and r.headers["x-mcnc-numerics"] == engine.profile
            got = load_st(r.content)
            want_dtype = None if dtype == "native" else torch.float16
            on_gpu = m.reconstruct(case.bundle, device="cuda", dtype=want_dtype)
            for name, t in on_gpu.items():
                assert torch.equal(got[name], t.cpu()), name  # the same bits as the device computed
            m.reconstruct(case.bundle, device="cuda", verify=True)  # and within the fingerprint
            again = c.get(f"/models/sha256:{digest}/weights", params={"dtype": dtype})
            assert again.content == r.content  # from tier 1
        for (_key, _name), t in engine.memory._items.items():
            assert t.device.type == "cpu"
