"""The client against a live server on loopback: load, caching, bases, offline, resume."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import httpx
import pytest
import torch
from safetensors.torch import load_file

import client
import mcnc_core as m
from tests.client.conftest import tiny_net

pytestmark = pytest.mark.e2e


def make(live, tmp_path, **kw) -> client.Client:
    return client.Client(live.url, cache_dir=tmp_path / "cache", progress=False, **kw)


def test_push_then_load_equals_reconstruct(live, tmp_path, bundles):
    with make(live, tmp_path / "uploader") as up:
        info = up.push(bundles.full, name="mlp", tag="v1")
        assert info.created and info.mode == "full" and info.num_params == bundles.full.num_params
        assert up.push(bundles.full, name="mlp", tag="v1").created is False  # idempotent
    with make(live, tmp_path) as c:
        state = c.load("mlp:v1")
        ref = m.reconstruct(bundles.full)
        assert list(state) == list(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
        report = c.last_report
        assert report.bytes_received == info.size and report.full_weights_bytes == bundles.full.reconstructed_nbytes
        assert report.saving > 1 and report.cached == []
        model = tiny_net(9)
        ptr = model[0].weight.data_ptr()
        loaded = c.load(info.digest, model=model)  # decoded straight into a fresh instance
        assert all(torch.equal(t, ref[k]) for k, t in model.state_dict().items())
        assert model[0].weight.data_ptr() == ptr and loaded["0.weight"].data_ptr() == ptr
        half = tiny_net(9).half()
        c.load(info.digest, model=half, dtype="float32")  # a dtype: reconstruct, then load_state_dict
        assert torch.equal(half[0].weight, ref["0.weight"].half())


def test_second_load_downloads_no_bundle(live, tmp_path, bundles):
    with make(live, tmp_path / "up") as up:
        up.push(bundles.full, name="mlp")
    with make(live, tmp_path) as c:
        c.load("mlp")
        assert live.requests("/bundles/{ref}", "GET") == 1
        c.load("mlp")
        assert c.last_report.bytes_received == 0 and c.last_report.cached == ["bundle"]
        digest = c.last_report.digest
        c.load(f"sha256:{digest}")  # a cached digest ref: no request at all
    assert live.requests("/bundles/{ref}", "GET") == 1  # checked on the server side
    assert live.requests("/models/{ref}", "GET") == 2  # resolving the name, twice (GET: errors carry a body)


def test_base_is_fetched_once_for_several_deltas(live, tmp_path, bundles):
    with make(live, tmp_path / "up") as up:
        base_info = up.push_base(bundles.base)
        assert base_info.digest.removeprefix("sha256:") == bundles.deltas[0].base.sha256
        for i, d in enumerate(bundles.deltas):
            up.push(d, name="delta", tag=f"v{i}")
    with make(live, tmp_path) as c:
        for i, d in enumerate(bundles.deltas):
            state = c.load(f"delta:v{i}")
            ref = m.reconstruct(d, base=bundles.base)
            assert all(torch.equal(state[k], ref[k]) for k in ref)
        assert c.last_report.cached == ["base"]
    assert live.requests("/bases/{digest}", "GET") == 1


def test_offline_mode_opens_no_socket(live, tmp_path, bundles, monkeypatch):
    with make(live, tmp_path) as c:
        c.push(bundles.full, name="mlp")  # push caches the bytes and the ref

    def no_sockets(*a, **k):
        raise AssertionError("offline mode opened a socket")

    monkeypatch.setattr(socket.socket, "connect", no_sockets)
    monkeypatch.setattr(socket, "create_connection", no_sockets)
    monkeypatch.setenv("MCNC_OFFLINE", "1")
    with make(live, tmp_path) as c:
        assert c.config.offline
        state = c.load("mlp")
        assert torch.equal(state["0.weight"], m.reconstruct(bundles.full)["0.weight"])
        with pytest.raises(client.OfflineError, match="'other:v2'"):
            c.load("other:v2")
        with pytest.raises(client.OfflineError):
            c.info("mlp")
        assert c._http is None


class CutOnce(httpx.BaseTransport):
    """Serves the first weights response only up to ``cut`` bytes, then fails like a dropped link."""

    def __init__(self, cut: int) -> None:
        self.inner, self.cut, self.done = httpx.HTTPTransport(), cut, False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        if self.done or not request.url.path.endswith("/weights") or request.method != "GET":
            return resp
        self.done = True
        stream = resp.stream
        cut = self.cut

        class Broken(httpx.SyncByteStream):
            def __iter__(self):
                sent = 0
                for chunk in stream:
                    if sent + len(chunk) >= cut:
                        yield chunk[: cut - sent]
                        raise httpx.ReadError("connection dropped")
                    sent += len(chunk)
                    yield chunk

            def close(self):
                stream.close()

        return httpx.Response(resp.status_code, headers=resp.headers, stream=Broken(), request=request)


def test_interrupted_download_resumes_to_identical_bytes(live, tmp_path, bundles):
    with make(live, tmp_path / "up") as up:
        up.push(bundles.full, name="mlp")
    with make(live, tmp_path / "a") as c:
        c.download_weights("mlp", tmp_path / "whole.safetensors")
    whole = (tmp_path / "whole.safetensors").read_bytes()
    dest = tmp_path / "resumed.safetensors"
    with make(live, tmp_path / "b", transport=CutOnce(1000), retries=0) as c:
        with pytest.raises(client.ConnectionFailedError):
            c.download_weights("mlp", dest)
        assert not dest.exists() and (tmp_path / "resumed.safetensors.incomplete").stat().st_size == 1000
        report = c.download_weights("mlp", dest)  # resumes with Range from byte 1000
        # the rest of the weights only: the bundle (which fixes their layout and fingerprint) came
        # first, in the interrupted call, and is cached
        assert report.bytes_received == len(whole) - 1000 and report.cached == ["bundle"]
    assert dest.read_bytes() == whole
    assert not (tmp_path / "resumed.safetensors.incomplete").exists()
    state = load_file(dest)
    assert torch.equal(state["2.weight"], m.reconstruct(bundles.full)["2.weight"])


def test_changed_etag_restarts_the_download(live, tmp_path, bundles):
    with make(live, tmp_path / "up") as up:
        up.push(bundles.full, name="mlp")
    dest = tmp_path / "w.safetensors"
    partial = tmp_path / "w.safetensors.incomplete"
    partial.write_bytes(b"x" * 500)
    partial.with_name("w.safetensors.incomplete.json").write_text('{"etag": "\\"stale\\"", "total": 9}')
    with make(live, tmp_path) as c:
        c.download_weights("mlp", dest, dtype="float16")
        # the whole file again (the stale 500 bytes were dropped) plus the bundle used to verify it
        assert c.last_report.bytes_received == dest.stat().st_size + len(bundles.full.to_bytes())
    assert load_file(dest)["0.weight"].dtype == torch.float16


def test_load_into_a_model_with_other_keys_lists_them(live, tmp_path, bundles):
    with make(live, tmp_path) as c:
        c.push(bundles.full, name="mlp")
        with pytest.raises(client.StateDictMismatchError, match=r"missing keys \['0.extra'\]") as exc:
            model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
            model[0].register_buffer("extra", torch.zeros(1))
            c.load("mlp", model=model)
        assert exc.value.unexpected == []
        wider = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 11))
        before = wider[2].weight.clone()
        with pytest.raises(client.StateDictMismatchError, match=r"shapes differ for \['2.weight', '2.bias'\]"):
            c.load("mlp", model=wider)
        assert torch.equal(wider[2].weight, before)  # nothing written
        with torch.device("meta"):
            ghost = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        with pytest.raises(client.StateDictMismatchError, match="on the meta device") as exc:
            c.load("mlp", model=ghost)
        assert exc.value.meta == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_info_list_delete_and_not_found(live, tmp_path, bundles):
    with make(live, tmp_path) as c:
        c.push(bundles.full, name="mlp", tag="v1")
        assert c.info("mlp:v1").num_params == bundles.full.num_params
        assert [(t.name, t.tag) for t in c.list()] == [("mlp", "v1")]
        with pytest.raises(client.ModelNotFoundError):
            c.info("nope")
        c.delete("mlp:v1")
        assert c.list() == []


def test_async_client_matches(live, tmp_path, bundles):
    async def go():
        async with client.AsyncClient(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
            info = await c.push(bundles.full, name="amlp")
            state = await c.load("amlp")
            await c.download_weights("amlp", tmp_path / "w.safetensors")
            return info, state, c.last_report

    info, state, report = asyncio.run(go())
    assert info.created and torch.equal(state["0.weight"], m.reconstruct(bundles.full)["0.weight"])
    assert report.bytes_received == (tmp_path / "w.safetensors").stat().st_size


def test_a_base_that_does_not_match_its_digest_never_enters_the_cache(tmp_path, bundles):
    from safetensors.torch import save

    delta = bundles.deltas[0]
    data = delta.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    wrong = save({k: v + 1 for k, v in bundles.base.items()})

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/models/delta:latest":
            return httpx.Response(200, json={"id": digest, "digest": f"sha256:{digest}"})
        if request.url.path == f"/bundles/{digest}":
            return httpx.Response(200, content=data, headers={"ETag": f'"{digest}"'})
        return httpx.Response(200, content=wrong, headers={"ETag": '"x"'})

    c = client.Client("http://mcnc.test", cache_dir=tmp_path, transport=httpx.MockTransport(handler), progress=False)
    with pytest.raises(client.IntegrityError, match="state digest"):
        c.load("delta")
    assert not c.cache.has(delta.base.sha256)
    assert [p.name for p in (tmp_path / "blobs").iterdir()] == [digest]  # the bundle only; no partial left
