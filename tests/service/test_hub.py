"""The Hub-compatible routes on a live server: huggingface_hub.snapshot_download fetches a delta's
PEFT adapter (no base registered), and real peft loads it as the same model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import huggingface_hub
import peft
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

import mcnc_core as m
from service import Settings
from service.storage import commit_id
from tests._adapters import LoraDelta, llama, logits, lora_delta
from tests._live import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture
def hub_env(tmp_path, monkeypatch, hub_online) -> Path:
    """huggingface_hub pointed at nothing but our server: its home and cache under tmp_path, online."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return tmp_path / "hf-cache"


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with LiveServer(Settings(data_dir=tmp_path / "server", adapter_dtype="float32")) as srv:
        yield srv


def push(live: LiveServer, data: bytes, name: str, tag: str | None = None) -> str:
    params = {"name": name} | ({"tag": tag} if tag else {})
    r = httpx.post(f"{live.url}/bundles", params=params, content=data, timeout=30)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def snapshot(live: LiveServer, cache: Path, repo_id: str, revision: str | None = None, **kw) -> Path:
    return Path(
        huggingface_hub.snapshot_download(
            repo_id=repo_id, revision=revision, endpoint=live.url, cache_dir=cache, token=False, **kw
        )
    )


def test_snapshot_download_of_a_delta_without_its_base_loads_in_peft(live, hub_env, case, tmp_path):
    digest = push(live, case.bundle.to_bytes(), "acme/tiny-lora", "v1")
    folder = snapshot(live, hub_env, "acme/tiny-lora", "v1")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # The commit is 40 hex (what huggingface_hub treats as a commit), derived from the digest.
    assert folder.name == commit_id(digest, []) and len(folder.name) == 40
    local = m.export_peft(case.bundle, tmp_path / "local", dtype=torch.float32)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (folder / name).read_bytes() == (local / name).read_bytes(), name

    loaded = peft.PeftModel.from_pretrained(llama(), str(folder)).eval()
    torch.testing.assert_close(logits(loaded), case.logits, rtol=1e-5, atol=1e-5)  # as in tests/core/test_peft.py
    merged = loaded.merge_and_unload().state_dict()
    for name, t in m.reconstruct(case.bundle, base=case.base).items():
        assert torch.equal(merged[name], t), name

    # The server holds no base: its own full weights answer 409, naming the base and the way out.
    r = httpx.get(f"{live.url}/models/acme/tiny-lora:v1/weights", timeout=30)
    assert r.status_code == 409 and r.headers["x-error-code"] == "base_missing"
    assert case.bundle.base.sha256 in r.json()["error"]["message"] and "POST /bases" in r.json()["error"]["message"]


def test_main_is_the_default_tag_and_digests_are_revisions(live, hub_env, case):
    digest = push(live, case.bundle.to_bytes(), "tiny")  # tag "latest": main is the newest push
    assert snapshot(live, hub_env, "tiny").name == commit_id(digest, [])  # revision None: "main"
    info = huggingface_hub.HfApi(endpoint=live.url, token=False).model_info("tiny", revision=f"sha256:{digest}")
    assert info.sha == commit_id(digest, []) and sorted(s.rfilename for s in info.siblings) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    files = huggingface_hub.HfApi(endpoint=live.url, token=False).list_repo_tree("tiny", revision=digest)
    sizes = {f.path: f.size for f in files}
    assert sizes["adapter_model.safetensors"] > 0 and len(sizes) == 2
    path = huggingface_hub.hf_hub_download(
        "tiny", "adapter_config.json", endpoint=live.url, cache_dir=hub_env, token=False
    )
    assert json.loads(Path(path).read_text())["r"] == 8


def test_hub_errors_map_to_huggingface_hub_exceptions(live, hub_env, case):
    push(live, case.bundle.to_bytes(), "acme/tiny-lora", "v1")
    with pytest.raises(RevisionNotFoundError):
        snapshot(live, hub_env, "acme/tiny-lora", "v2")
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.HfApi(endpoint=live.url, token=False).model_info("acme/nothing")
    with pytest.raises(huggingface_hub.errors.RemoteEntryNotFoundError):
        huggingface_hub.hf_hub_download(
            "acme/tiny-lora", "README.md", revision="v1", endpoint=live.url, cache_dir=hub_env, token=False
        )
    r = httpx.get(f"{live.url}/acme/tiny-lora/resolve/v1/model.safetensors", timeout=30)
    # The Hub's error shape on Hub paths: {"error": "<message>"} + X-Error-Code / X-Error-Message.
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound"
    assert "no file 'model.safetensors'" in r.json()["error"] and "no file" in r.headers["x-error-message"]


def test_rank0_delta_is_not_an_adapter(live, hub_env, delta):
    push(live, delta.data, "rank0")
    r = httpx.get(f"{live.url}/api/models/rank0/tree/main", timeout=30)
    assert r.status_code == 422 and r.headers["x-error-code"] == "not_an_adapter"
    assert "(rank 0), not low-rank factors" in r.json()["error"]


def test_files_have_strong_etags_304_ranges_and_are_exported_once(live, case):
    digest = push(live, case.bundle.to_bytes(), "acme/tiny-lora", "v1")
    url = f"{live.url}/acme/tiny-lora/resolve/v1/adapter_model.safetensors"
    with httpx.Client(timeout=30) as c:
        head = c.head(url)
        assert head.status_code == 200 and head.headers["x-repo-commit"] == commit_id(digest, [])
        get = c.get(url)
        body = get.content
        assert get.headers["etag"] == head.headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'
        assert int(head.headers["content-length"]) == len(body)
        assert c.get(url, headers={"If-None-Match": get.headers["etag"]}).status_code == 304
        part = c.get(url, headers={"Range": "bytes=10-", "If-Range": get.headers["etag"]})
        assert part.status_code == 206 and part.content == body[10:]
        by_digest = c.get(f"{live.url}/acme/tiny-lora/resolve/{digest}/adapter_model.safetensors")
        assert by_digest.content == body and "immutable" in by_digest.headers["cache-control"]
        for _ in range(3):
            c.get(f"{live.url}/api/models/acme/tiny-lora/tree/{digest}")
    assert (
        live.app.state.metrics.registry.get_sample_value("mcnc_reconstructions_total", {"kind": "adapter"}) == 1
    )  # every request above shared one export
    route = "/{repo_id}/resolve/{revision}/{filename}"
    assert live.requests(route) == 4 and live.requests(route, "HEAD") == 1


def test_hub_routes_need_the_read_scope(tmp_path, hub_env, case):
    tokens = json.dumps({"reader": ["read"], "writer": ["write"]})
    with LiveServer(Settings(data_dir=tmp_path / "s", api_tokens=tokens)) as srv:
        r = httpx.post(f"{srv.url}/bundles", params={"name": "t"}, content=case.bundle.to_bytes(),
                       headers={"Authorization": "Bearer writer"}, timeout=30)  # fmt: skip
        assert r.status_code == 201
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError, match="needs a token with 'read' scope"):
            snapshot(srv, hub_env, "t")
        folder = huggingface_hub.snapshot_download(repo_id="t", endpoint=srv.url, cache_dir=hub_env, token="reader")
        assert (Path(folder) / "adapter_model.safetensors").is_file()


def test_revisions_resolve_by_point_queries_whatever_the_number_of_tags(live, case, monkeypatch):
    """Issue 11 D9: a name's tags were all loaded to resolve one revision (200k tags: 27 MB per
    answer); now a tag, "main" or a digest is one indexed lookup, and errors list ten tags."""
    digest = push(live, case.bundle.to_bytes(), "many", "latest")
    store = live.app.state.store
    with store.meta._tx(write=True) as conn:  # tags straight into the store: uploads are not under test
        for i in range(300):
            store.meta._set_tag(conn, "many", f"t{i:04d}", digest)
    seen: list[int | None] = []
    real = store.meta.tags_named

    def spy(name: str, **kw: object) -> object:
        seen.append(kw.get("limit"))  # type: ignore[arg-type]
        return real(name, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store.meta, "tags_named", spy)
    for revision in ("main", "t0299", f"sha256:{digest}", digest):
        r = httpx.get(f"{live.url}/api/models/many/revision/{revision}", timeout=30)
        assert r.status_code == 200, (revision, r.text)
        assert r.json()["sha"] == commit_id(digest, [])
    r = httpx.get(f"{live.url}/api/models/many/revision/nope", timeout=30)
    assert r.status_code == 404 and r.text.count(", t0") <= 10
    assert seen and None not in seen and max(seen) <= 10  # type: ignore[type-var]


def test_an_adapter_over_the_memory_cache_is_kept_on_disk_and_exported_once(tmp_path, case):
    """N7: an adapter larger than MCNC_ADAPTER_CACHE_BYTES was re-exported on every Hub request."""
    settings = Settings(data_dir=tmp_path / "server", adapter_dtype="float32", adapter_cache_bytes=16)
    with LiveServer(settings) as live, httpx.Client(timeout=30) as c:
        digest = push(live, case.bundle.to_bytes(), "acme/big-lora", "v1")
        url = f"{live.url}/acme/big-lora/resolve/v1/adapter_model.safetensors"
        bodies = []
        for _ in range(3):
            c.get(f"{live.url}/api/models/acme/big-lora/revision/v1").raise_for_status()
            c.get(f"{live.url}/api/models/acme/big-lora/tree/{digest}").raise_for_status()
            assert c.head(url).status_code == 200
            bodies.append(c.get(url).content)
        part = c.get(url, headers={"Range": "bytes=5-20"})
        exports = live.app.state.metrics.registry.get_sample_value("mcnc_reconstructions_total", {"kind": "adapter"})
        adapters = live.app.state.adapters
        assert exports == 1  # twelve requests, one export
        assert adapters.nbytes == 0 and adapters.disk_nbytes > 16  # kept on disk, not in memory
        assert bodies[0] == bodies[1] == bodies[2] and part.status_code == 206 and part.content == bodies[0][5:21]
        assert c.get(url).headers["etag"] == f'"{hashlib.sha256(bodies[0]).hexdigest()}"'
        adapters.forget(digest)  # what a delete of the bundle calls
        assert adapters.disk_nbytes == 0 and not [
            p for p in (tmp_path / "server" / "adapters").rglob("*") if p.is_file()
        ]
        assert c.get(url).content == bodies[0]  # exported again, on demand
        f = adapters.files(digest)["adapter_model.safetensors"]
        adapters.forget(digest)  # evicted between a request's files() and its body: exported again
        assert b"".join(adapters.open(digest, f, 0, f.size)) == bodies[0]


def test_an_adapter_evicted_from_memory_moves_to_disk_and_is_not_exported_again(tmp_path, case):
    """An export pushed out of the memory LRU was dropped, and its next read exported it again."""
    from mcnc_core.peft import peft_adapter_files

    f32 = sum(len(b) for b in peft_adapter_files(case.bundle, dtype=torch.float32).values())
    settings = Settings(data_dir=tmp_path / "server", adapter_dtype="bfloat16", adapter_cache_bytes=f32)
    with LiveServer(settings) as live, httpx.Client(timeout=30) as c:
        push(live, case.bundle.to_bytes(), "acme/lru", "v1")
        adapters = live.app.state.adapters
        adapters.wait_prefetched()  # the push's background export (bf16) is in memory
        plain = f"{live.url}/acme/lru/resolve/v1/adapter_model.safetensors"
        exact = f"{live.url}/acme/lru/resolve/v1:float32/adapter_model.safetensors"
        first = c.get(plain).content
        c.get(exact).raise_for_status()  # float32 fills the memory budget: bf16 is evicted
        assert adapters.disk_nbytes >= len(first)  # moved to the disk tier, not dropped
        again = c.get(plain)
        part = c.get(plain, headers={"Range": "bytes=3-9"})
        exports = live.app.state.metrics.registry.get_sample_value("mcnc_reconstructions_total", {"kind": "adapter"})
    assert exports == 2  # bf16 and float32 once each; the evicted one was read back from disk
    assert again.content == first and again.headers["etag"] == f'"{hashlib.sha256(first).hexdigest()}"'
    assert part.status_code == 206 and part.content == first[3:10]


def test_a_pushed_adapter_is_exported_in_the_background_before_its_first_read(tmp_path, case, delta):
    with LiveServer(Settings(data_dir=tmp_path / "server")) as live, httpx.Client(timeout=30) as c:
        exports = lambda: live.app.state.metrics.registry.get_sample_value(  # noqa: E731
            "mcnc_reconstructions_total", {"kind": "adapter"}
        )
        push(live, case.bundle.to_bytes(), "acme/fresh", "v1")
        push(live, delta.data, "acme/rank0", "v1")  # no adapter form: its background export is refused, logged
        live.app.state.adapters.wait_prefetched()
        assert exports() == 1  # exported after the 201, before any read
        body = c.get(f"{live.url}/acme/fresh/resolve/v1/adapter_model.safetensors")
        assert body.status_code == 200 and exports() == 1  # the first read found it exported
        assert c.get(f"{live.url}/api/models/acme/rank0").status_code == 422
        push(live, case.bundle.to_bytes(), "acme/fresh", "v2")  # bytes already stored: nothing queued
        live.app.state.adapters.wait_prefetched()
        assert exports() == 1
