"""POST /bases, GET|HEAD /bases/{digest}, and delta bundles reconstructed against a registered base."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save

import mcnc_core as m
from mcnc_core.fingerprint import state_digest_file
from tests.service._helpers import error_code, load_st


def test_streaming_digest_matches_core(tmp_path, delta):
    path = tmp_path / "base.safetensors"
    path.write_bytes(delta.base_file)
    digest, n_tensors, n_params = state_digest_file(path)
    assert digest == m.state_digest(delta.base) == delta.bundle.base.sha256
    assert n_tensors == len(delta.base) and n_params == sum(t.numel() for t in delta.base.values())


def test_register_base_then_delta_bundle_streams_correct_weights(client, delta, settings):
    r = client.post("/bases", content=delta.base_file)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["digest"] == delta.bundle.base.sha256
    assert body["file_sha256"] == hashlib.sha256(delta.base_file).hexdigest()
    assert client.post("/bases", content=delta.base_file).status_code == 200  # idempotent
    up = client.post("/bundles", params={"name": "d"}, content=delta.data)
    assert up.status_code == 201, up.text
    assert up.json()["mode"] == "delta" and up.json()["base"] == delta.bundle.base.sha256
    got = load_st(client.get("/models/d/weights").content)
    want = m.reconstruct(delta.bundle, delta.base)
    assert got.keys() == want.keys()
    for k, t in want.items():
        assert torch.equal(got[k], t), k
    part = client.get("/models/d/weights", headers={"Range": "bytes=1000-"})
    assert part.status_code == 206


def test_get_and_head_base(client, delta):
    digest = client.post("/bases", content=delta.base_file).json()["digest"]
    file_sha = hashlib.sha256(delta.base_file).hexdigest()
    for ref in (digest, f"sha256:{digest}"):
        r = client.get(f"/bases/{ref}")
        assert r.status_code == 200 and r.content == delta.base_file and r.headers["etag"] == f'"{file_sha}"'
    h = client.head(f"/bases/{digest}")
    assert h.status_code == 200 and int(h.headers["content-length"]) == len(delta.base_file)
    assert client.get(f"/bases/{digest}", headers={"If-None-Match": f'"{file_sha}"'}).status_code == 304
    r = client.get(f"/bases/{digest}", headers={"Range": "bytes=0-15"})
    assert r.status_code == 206 and r.content == delta.base_file[:16]
    r = client.get("/bases/" + "1" * 64)
    assert r.status_code == 404 and error_code(r) == "base_not_found"
    r = client.get("/bases/notadigest")
    assert r.status_code == 404 and error_code(r) == "base_not_found"


def test_malformed_base_is_refused_and_leaves_nothing(client, settings):
    for data in (b"junk", b"\xff" * 16, save({"w": torch.zeros(2)})[:-3]):
        r = client.post("/bases", content=data)
        assert r.status_code == 422 and error_code(r) == "invalid_base", data
    files = [p for p in settings.data_dir.rglob("*") if p.is_file() and not p.name.startswith("mcnc.sqlite3")]
    assert files == []


def test_wrong_base_does_not_unlock_a_delta(client, delta):
    other = {k: v + 1 for k, v in delta.base.items()}
    client.post("/bases", content=save(other))
    client.post("/bundles", params={"name": "d"}, content=delta.data)
    r = client.get("/models/d/weights")
    assert r.status_code == 409 and error_code(r) == "base_missing"
