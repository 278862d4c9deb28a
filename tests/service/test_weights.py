"""GET|HEAD /models/{ref}/weights: bytes equal mcnc_core.reconstruct, ETag/304, Range/206, dtype."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

import mcnc_core as m
from service import Settings, create_app
from tests.service._helpers import error_code, load_st, metric, served_reconstructions


@pytest.fixture
def named(client, tiny):
    return client.post("/bundles", params={"name": "mlp"}, content=tiny.data).json()["id"]


def _header(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n])


def test_weights_equal_reconstruct(client, tiny, named):
    r = client.get("/models/mlp/weights")
    assert r.status_code == 200, r.text
    assert int(r.headers["content-length"]) == len(r.content)
    got, want = load_st(r.content), m.reconstruct(tiny.bundle)
    assert set(got) == set(want)
    assert [k for k in _header(r.content) if k != "__metadata__"] == list(want)  # manifest order on the wire
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    meta = _header(r.content)["__metadata__"]
    assert meta["format"] == "pt" and meta["bundle_sha256"] == named
    assert r.headers["x-mcnc-bundle-digest"] == f"sha256:{named}"
    assert r.headers["x-mcnc-numerics"].startswith("cpu/torch-") and "/mcnc-" in r.headers["x-mcnc-numerics"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dtype_parameter(client, tiny, named, dtype):
    r = client.get("/models/mlp/weights", params={"dtype": dtype})
    assert r.status_code == 200
    want = m.reconstruct(tiny.bundle, dtype=getattr(torch, dtype))
    got = load_st(r.content)
    for name, t in want.items():
        assert got[name].dtype == getattr(torch, dtype) and torch.equal(got[name], t), name


def test_bad_dtype_is_invalid_request(client, named):
    r = client.get("/models/mlp/weights", params={"dtype": "int8"})
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert "dtype" in r.json()["error"]["message"]


def test_etag_is_strong_stable_and_depends_on_dtype_and_profile(client, named):
    a = client.head("/models/mlp/weights")
    assert a.status_code == 200 and a.content == b""
    etag = a.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert client.get("/models/mlp/weights").headers["etag"] == etag
    assert client.head(f"/models/{named}/weights").headers["etag"] == etag
    assert client.head("/models/mlp/weights", params={"dtype": "float16"}).headers["etag"] != etag
    engine = client.app.state.engine
    engine.profile = "cuda/Some GPU/cuda-12/torch-x"  # another numerics profile must never share an ETag
    assert client.head("/models/mlp/weights").headers["etag"] != etag


def test_head_has_content_length_without_reconstructing(client, tiny, named):
    h = client.head("/models/mlp/weights")
    full = client.get("/models/mlp/weights", params={"dtype": "float32"})
    assert int(h.headers["content-length"]) == len(full.content)
    assert metric(client, "mcnc_reconstructions_total", kind="full") == 1  # only the GET rebuilt


def test_if_none_match_gives_304_without_body(client, named):
    etag = client.head("/models/mlp/weights").headers["etag"]
    r = client.get("/models/mlp/weights", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert served_reconstructions(client.app) == 0
    assert client.get("/models/mlp/weights", headers={"If-None-Match": '"stale"'}).status_code == 200


def test_range_rebuilds_only_touched_tensors(client, tiny, named):
    engine = client.app.state.engine
    bundle = client.app.state.catalog.bundle(named)
    lay = engine.layout(named, bundle, "native")
    full = b"".join(engine.stream(lay, bundle, 0, lay.total))  # reference bytes
    engine.memory.drop_digest(named)
    before = metric(client, "mcnc_reconstructions_total", kind="partial")
    name = lay.names[-1]  # the last tensor (a bias): a range inside it
    b, e = lay.spans[name]
    calls: list[object] = []
    import service.reconstructor as eng

    real = eng.iter_reconstruct

    def spy(*args, **kwargs):
        calls.append(kwargs.get("names"))
        return real(*args, **kwargs)

    eng.iter_reconstruct = spy
    try:
        r = client.get("/models/mlp/weights", headers={"Range": f"bytes={b + 4}-{e - 1}"})
    finally:
        eng.iter_reconstruct = real
    assert r.status_code == 206 and r.content == full[b + 4 : e]
    assert r.headers["content-range"] == f"bytes {b + 4}-{e - 1}/{lay.total}"
    assert calls == [[name]]
    assert metric(client, "mcnc_reconstructions_total", kind="partial") == before + 1


def test_range_resume_concatenates_to_full(client, named):
    full = client.get("/models/mlp/weights").content
    cut = len(full) // 3
    head = client.get("/models/mlp/weights", headers={"Range": f"bytes=0-{cut - 1}"})
    tail = client.get("/models/mlp/weights", headers={"Range": f"bytes={cut}-"})
    assert head.status_code == tail.status_code == 206
    assert head.content + tail.content == full
    header_only = client.get("/models/mlp/weights", headers={"Range": "bytes=0-7"})
    assert header_only.content == full[:8]
    suffix = client.get("/models/mlp/weights", headers={"Range": "bytes=-5"})
    assert suffix.content == full[-5:]


def test_if_range_resumes_only_the_same_representation(client, named):
    full = client.get("/models/mlp/weights")
    etag = full.headers["etag"]
    same = client.get("/models/mlp/weights", headers={"Range": "bytes=100-", "If-Range": etag})
    assert same.status_code == 206 and same.content == full.content[100:]
    stale = client.get("/models/mlp/weights", headers={"Range": "bytes=100-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == full.content  # never a splice of two
    bundle = client.get("/bundles/mlp")
    stale = client.get("/bundles/mlp", headers={"Range": "bytes=10-", "If-Range": '"nope"'})
    assert stale.status_code == 200 and stale.content == bundle.content


def test_unsatisfiable_range_is_416(client, named):
    total = int(client.head("/models/mlp/weights").headers["content-length"])
    r = client.get("/models/mlp/weights", headers={"Range": f"bytes={total}-"})
    assert r.status_code == 416 and error_code(r) == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{total}"


def test_unknown_model_is_404(client):
    r = client.get("/models/ghost/weights")
    assert r.status_code == 404 and error_code(r) == "model_not_found"


def test_memory_tier_hit_avoids_rebuild(client, named):
    client.get("/models/mlp/weights")
    client.get("/models/mlp/weights")
    client.get("/models/mlp/weights", headers={"Range": "bytes=1000-2000"})  # past the header
    assert served_reconstructions(client.app) == 1
    assert metric(client, "mcnc_cache_hits_total", tier="memory") == 2
    assert metric(client, "mcnc_cache_misses_total", tier="memory") == 1


def test_memory_budget_evicts_lru(tmp_path, tiny, tiny2):
    budget = tiny2.bundle.reconstructed_nbytes + 64
    with TestClient(create_app(Settings(data_dir=tmp_path, memory_cache_bytes=budget))) as c:
        c.post("/bundles", params={"name": "a"}, content=tiny.data)
        c.post("/bundles", params={"name": "b"}, content=tiny2.data)
        a1, b1 = c.get("/models/a/weights").content, c.get("/models/b/weights").content
        assert c.app.state.engine.memory.nbytes <= budget
        assert metric(c, "mcnc_cache_evictions_total", tier="memory") > 0
        assert c.get("/models/a/weights").content == a1 and c.get("/models/b/weights").content == b1


def test_model_larger_than_memory_budget_streams_without_caching(tmp_path, tiny):
    with TestClient(create_app(Settings(data_dir=tmp_path, memory_cache_bytes=0))) as c:
        c.post("/bundles", params={"name": "a"}, content=tiny.data)
        first, second = c.get("/models/a/weights").content, c.get("/models/a/weights").content
        assert first == second
        assert load_st(first).keys() == m.reconstruct(tiny.bundle).keys()
        assert c.app.state.engine.memory.nbytes == 0
        assert served_reconstructions(c.app) == 2


def test_busy_when_reconstruction_queue_is_full(tmp_path, tiny):
    settings = Settings(data_dir=tmp_path, max_concurrent_reconstructions=1, max_queued_reconstructions=0)
    with TestClient(create_app(settings)) as c:
        c.post("/bundles", params={"name": "a"}, content=tiny.data)
        c.app.state.reconstructor._pending = 1  # one reconstruction already running
        r = c.get("/models/a/weights")
        assert r.status_code == 429 and error_code(r) == "busy" and r.headers["retry-after"] == "1"
        c.app.state.reconstructor._pending = 0
        assert c.get("/models/a/weights").status_code == 200


def test_weights_digest_header_after_first_full_stream(client, named):
    import hashlib

    first = client.get("/models/mlp/weights")
    assert "x-mcnc-weights-digest" not in first.headers  # unknown before the first rebuild
    second = client.get("/models/mlp/weights")
    assert second.headers["x-mcnc-weights-digest"] == "sha256:" + hashlib.sha256(first.content).hexdigest()
    assert (
        client.head("/models/mlp/weights").headers["x-mcnc-weights-digest"] == second.headers["x-mcnc-weights-digest"]
    )
