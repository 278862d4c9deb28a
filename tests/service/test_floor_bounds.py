"""Regressions of issue 19 on the server (N1, N6, N9) and the PEFT export (N10, N12)."""

from __future__ import annotations

import dataclasses

import pytest
import safetensors.torch
from fastapi.testclient import TestClient

import mcnc_core as m
from mcnc_core.manifest import BaseRef, TensorEntry
from mcnc_core.peft import peft_adapter_files
from service import Settings, create_app
from tests._adapters import lora_delta
from tests.core.test_decode_bytes import rank_bomb
from tests.service._helpers import error_code, metric

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def delta():
    return lora_delta()


def test_n1_the_rank_4096_bomb_is_refused_at_upload(tmp_path):
    """9,312 bytes declaring a 1 MiB tensor at rank 4096 (4 GiB of factors) were stored, then their
    verification or first weights request OOM-killed the server. Now: 422 at upload, naming the bound."""
    data = rank_bomb()
    assert len(data) < 10_000
    with TestClient(create_app(Settings(data_dir=tmp_path, reconstruction_memory_bytes=1 << 30))) as c:
        r = c.post("/bundles", content=data, headers=OCTET)
        assert r.status_code == 422 and error_code(r) == "limit_exceeded", r.text
        assert "max_factor_params" in r.json()["error"]["message"]
        assert metric(c, "mcnc_reconstructions_total", kind="verify") == 0  # refused before any decode
        assert c.get("/models").json()["total"] == 0


def test_n9_a_lone_surrogate_in_metadata_is_refused_at_upload(tmp_path, delta):
    bundle = dataclasses.replace(delta.bundle, metadata={**delta.bundle.metadata, "x-note": "a\ud800b"})
    with TestClient(create_app(Settings(data_dir=tmp_path))) as c:
        r = c.post("/bundles", params={"name": "s"}, content=bundle.to_bytes(), headers=OCTET)
        assert r.status_code == 422 and error_code(r) == "invalid_bundle", r.text
        assert "surrogate" in r.json()["error"]["message"]
        assert c.get("/models").json()["total"] == 0


def test_n6_a_failed_verification_is_remembered_and_nothing_serves_it(tmp_path, delta):
    """A delta with a wrong fingerprint, uploaded before its base: once the base is there, weights said
    422 but Hub info and files said 200, and every request reconstructed it again."""
    fp = dict(delta.bundle.fingerprint)
    first = next(e.name for e in delta.bundle.manifest if e.storage == "mcnc")
    fp[first] = [v + 1.0 for v in fp[first]]
    data = dataclasses.replace(delta.bundle, fingerprint=fp).to_bytes()
    with TestClient(create_app(Settings(data_dir=tmp_path))) as c:
        assert c.post("/bundles", params={"name": "org/bad"}, content=data, headers=OCTET).status_code == 201
        # Its base is not here yet: the push's background export may run (an unverified delta is
        # served flagged X-MCNC-Verified: false); what counts is that nothing is exported after it fails.
        c.app.state.adapters.wait_prefetched()
        exported_before = metric(c, "mcnc_reconstructions_total", kind="adapter") or 0
        base = safetensors.torch.save({k: v.contiguous() for k, v in delta.base.items()})
        assert c.post("/bases", content=base, headers=OCTET).status_code == 201
        for _ in range(3):
            r = c.get("/models/org/bad/weights")
            assert r.status_code == 422 and error_code(r) == "fingerprint_mismatch", r.text
        for path in (
            "/api/models/org/bad",
            "/api/models/org/bad/revision/main",
            "/org/bad/resolve/main/adapter_config.json",
        ):
            assert c.get(path).status_code == 422, path
        assert metric(c, "mcnc_reconstructions_total", kind="verify") == 1  # checked once, remembered
        assert (metric(c, "mcnc_reconstructions_total", kind="adapter") or 0) == exported_before  # none for serving


def test_n10_a_raw_tensor_cannot_overwrite_an_exported_factor(delta):
    b = delta.bundle
    target = next(e for e in b.manifest if e.storage == "mcnc")
    module = target.name.rpartition(".")[0]
    rank = target.rank
    forged = m.peft.lora_factors(b, target.name)[1].reshape(rank, *target.shape[1:]).clone() + 16.8
    name = f"{module}.lora_A.weight"
    raw_entry = TensorEntry(name, tuple(forged.shape), "F32", "raw")
    bundle = dataclasses.replace(b, manifest=(*b.manifest, raw_entry), raw={**b.raw, name: forged})
    with pytest.raises(m.ExportError, match="written twice"):
        peft_adapter_files(bundle, dtype=forged.dtype)


@pytest.mark.parametrize("bad", ["a/b", "..", "x\ny", "n\x00ul"])
def test_n12_tensor_and_base_names_must_be_module_paths(delta, bad):
    b = delta.bundle
    target = next(e for e in b.manifest if e.storage == "mcnc")
    renamed = f"{bad}.{target.name}"
    manifest = tuple(dataclasses.replace(e, name=renamed) if e is target else e for e in b.manifest)
    fp = {(renamed if k == target.name else k): v for k, v in b.fingerprint.items()}
    with pytest.raises(m.ExportError, match="not a module path"):
        peft_adapter_files(dataclasses.replace(b, manifest=manifest, fingerprint=fp))
    assert b.base is not None
    with pytest.raises(m.ExportError, match="base name"):
        peft_adapter_files(dataclasses.replace(b, base=BaseRef(f"../{bad}", b.base.sha256)))


def test_n5_a_stream_racing_a_delete_is_not_cut(tmp_path, tiny):
    """The stream reloaded the bundle from the store mid-stream: a delete after its 200 cut it. Now the
    route's parsed bundle serves the whole response."""
    with TestClient(create_app(Settings(data_dir=tmp_path, memory_cache_bytes=0))) as c:
        digest = c.post("/bundles", content=tiny.data, headers=OCTET).json()["id"]
        want = c.get(f"/models/sha256:{digest}/weights").content
        catalog, engine = c.app.state.catalog, c.app.state.engine  # type: ignore[attr-defined]
        bundle = catalog.bundle(digest)
        lay = engine.layout(digest, bundle, "native")
        stream = engine.stream(lay, bundle, 0, lay.total)
        got = [bytes(next(stream))]  # the header: the status line is out
        catalog.delete(digest, force=True)
        got += [bytes(p) for p in stream]
        assert b"".join(got) == want
        assert c.get(f"/bundles/sha256:{digest}").status_code == 404


@pytest.mark.redis
def test_n4_a_killed_lease_holder_is_replaced_within_seconds(tmp_path, tiny, redis_url):
    """A peer waited ~61 s when the holder of the reconstruction lock was killed (60 s lease). The lease
    is now FLIGHT_LEASE_S (3 s), renewed only by a live holder making progress."""
    import time

    from service.redis_cache import RedisCache

    url, prefix = redis_url
    settings = Settings(data_dir=tmp_path, redis_url=url, redis_prefix=prefix, memory_cache_bytes=0)
    with TestClient(create_app(settings)) as c:
        digest = c.post("/bundles", params={"name": "m"}, content=tiny.data, headers=OCTET).json()["id"]
        engine = c.app.state.engine  # type: ignore[attr-defined]
        key = engine.layout(digest, c.app.state.catalog.bundle(digest), "native").key  # type: ignore[attr-defined]
        assert engine.redis.claim(key) is not None  # a server that took the lease, then was killed
        t0 = time.monotonic()
        r = c.get("/models/m/weights")
        waited = time.monotonic() - t0
        assert r.status_code == 200
        assert RedisCache.FLIGHT_LEASE_S - 0.5 < waited < RedisCache.FLIGHT_LEASE_S + 5, waited
