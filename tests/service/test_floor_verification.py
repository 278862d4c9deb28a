"""Regressions of issue 19 N6 over real loopback HTTP: a delta stored before its base is checked when
the base arrives (no request needed), and a failed check is recorded in the database, so a restarted
server (or another replica) refuses the bundle without decoding it again."""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest
import safetensors.torch

from service import Settings
from tests._adapters import lora_delta
from tests._live import LiveServer
from tests.service._helpers import error_code

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def delta():
    return lora_delta()


def _bad(delta) -> bytes:
    """The delta with one fingerprint value off: valid to the reader, fails its check."""
    fp = dict(delta.bundle.fingerprint)
    first = next(e.name for e in delta.bundle.manifest if e.storage == "mcnc")
    fp[first] = [v + 1.0 for v in fp[first]]
    return dataclasses.replace(delta.bundle, fingerprint=fp).to_bytes()


def _verifications(srv: LiveServer) -> float:
    registry = srv.app.state.metrics.registry
    return float(registry.get_sample_value("mcnc_reconstructions_total", {"kind": "verify"}) or 0)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _base_bytes(delta) -> bytes:
    return safetensors.torch.save({k: v.contiguous() for k, v in delta.base.items()})


def test_n6_a_delta_stored_before_its_base_is_checked_when_the_base_arrives(tmp_path, delta):
    with LiveServer(Settings(data_dir=tmp_path)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        good = c.post("/bundles", params={"name": "org/good"}, content=delta.bundle.to_bytes(), headers=OCTET)
        bad = c.post("/bundles", params={"name": "org/bad"}, content=_bad(delta), headers=OCTET)
        assert good.status_code == bad.status_code == 201
        meta = srv.app.state.store.meta
        assert meta.get_bundle(good.json()["id"]).verified_at is None  # no base yet: not checked
        assert c.post("/bases", content=_base_bytes(delta), headers=OCTET).status_code == 201
        _wait(lambda: _verifications(srv) == 2)  # both, with no request for either
        _wait(lambda: meta.get_bundle(bad.json()["id"]).verification_failed_at is not None)
        assert meta.get_bundle(good.json()["id"]).verified_at is not None
        row = meta.get_bundle(bad.json()["id"])
        assert row.verified_at is None and "fingerprint_mismatch" in row.verification_error
        r = c.get("/models/org/bad/weights")
        assert r.status_code == 422 and error_code(r) == "fingerprint_mismatch"
        assert c.get("/models/org/good/weights").status_code == 200
        assert _verifications(srv) == 2  # remembered: no decode again


def test_n6_a_failed_verification_survives_a_restart(tmp_path, delta):
    """A failure lived in one process: each restart (and each replica) decoded the bundle again."""
    settings = Settings(data_dir=tmp_path, verify_max_params=0)  # stored unchecked, checked on first use
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/bases", content=_base_bytes(delta), headers=OCTET).status_code == 201
        r = c.post("/bundles", params={"name": "org/bad"}, content=_bad(delta), headers=OCTET)
        assert r.status_code == 201, r.text
        first = c.get("/models/org/bad/weights")
        assert first.status_code == 422 and error_code(first) == "fingerprint_mismatch"
        assert _verifications(srv) == 1
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:  # the restart
        for path in ("/models/org/bad/weights", "/api/models/org/bad", "/org/bad/resolve/main/adapter_config.json"):
            r = c.get(path)
            assert r.status_code == 422, (path, r.status_code, r.text)
        assert "checked before" in c.get("/models/org/bad/weights").json()["error"]["message"]
        assert _verifications(srv) == 0  # refused from the record, nothing decoded
