"""The Hub routes' fast path on a live server: a warm revision answered from the revision cache with
one database statement (and still rebuilt whenever its tag, verification or base changes), and
adapter files kept on disk sent zero-copy (``os.sendfile``) with the same ETags, ranges and bytes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import httpx
import pytest
from safetensors.torch import save as save_safetensors

import service.http_server as http_server
from service import Settings
from tests._adapters import LoraDelta, lora_delta
from tests._live import LiveServer

pytestmark = pytest.mark.e2e
OCTET = {"Content-Type": "application/octet-stream"}
READS = ("get_tag", "main_tag", "tag_by_commit", "tags_named", "get_bundle", "tag_files", "get_base", "base_names")


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    # adapters on the disk tier (as registry_fleet.py serves them): the zero-copy path
    with LiveServer(Settings(data_dir=tmp_path / "server", adapter_cache_bytes=0)) as srv:
        yield srv


def push(c: httpx.Client, data: bytes, name: str, tag: str, files: dict[str, str] | None = None) -> str:
    params = [("name", name), ("tag", tag)] + [("file", f"{n}:{sha}") for n, sha in (files or {}).items()]
    r = c.post("/bundles", params=params, content=data, headers=OCTET)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def fetch(c: httpx.Client, repo: str, revision: str = "main") -> tuple[dict, list[dict], dict[str, httpx.Response]]:
    """snapshot_download's requests: model info, tree, HEAD + GET of each file."""
    info = c.get(f"/api/models/{repo}/revision/{revision}")
    assert info.status_code == 200, info.text
    sha = info.json()["sha"]
    tree = c.get(f"/api/models/{repo}/tree/{sha}").json()
    got = {}
    for f in tree:
        assert c.head(f"/{repo}/resolve/{sha}/{f['path']}").status_code == 200
        got[f["path"]] = c.get(f"/{repo}/resolve/{sha}/{f['path']}")
    return info.json(), tree, got


def test_a_warm_fetch_reads_one_statement_per_request(live, case, monkeypatch):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        push(c, case.bundle.to_bytes(), "acme/warm", "v1")
        fetch(c, "acme/warm")  # cold: builds the answers
        meta = live.app.state.store.meta
        calls: list[str] = []
        for name in (*READS, "revision_state"):
            real = getattr(meta, name)
            monkeypatch.setattr(meta, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
        info, _, got = fetch(c, "acme/warm")
    assert calls == ["revision_state"] * 6  # six requests, one statement each (nine point queries each before)
    body = got["adapter_model.safetensors"]
    assert body.headers["etag"] == f'"{hashlib.sha256(body.content).hexdigest()}"'
    assert body.headers["x-mcnc-verified"] == "false" and info["mcnc"]["verified"] is False


def test_a_cached_revision_is_rebuilt_when_its_tag_moves_or_its_bundle_fails(live, case, delta):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        digest = push(c, case.bundle.to_bytes(), "acme/moving", "v1")
        before, tree, _ = fetch(c, "acme/moving", "v1")
        # The same bundle with a sidecar: a new commit; the cached answer must not be served.
        sha = c.post("/files", content=b"# card\n", headers=OCTET).json()["sha256"]
        push(c, case.bundle.to_bytes(), "acme/moving", "v1", {"README.md": sha})
        after, tree2, got = fetch(c, "acme/moving", "v1")
        assert after["sha"] != before["sha"] and "README.md" in got and got["README.md"].content == b"# card\n"
        assert [f["path"] for f in tree2] == ["README.md"] + [f["path"] for f in tree]
        # The tag moved to a bundle with no adapter form (rank 0): refused, not the cached adapter.
        push(c, delta.data, "acme/moving", "v1")
        r = c.get("/api/models/acme/moving/revision/v1")
        assert r.status_code == 422 and r.headers["x-error-code"] == "not_an_adapter"
        # Another replica found the adapter failing its fingerprint (its row says so): never served again.
        push(c, case.bundle.to_bytes(), "acme/failing", "v1")
        fetch(c, "acme/failing")
        live.app.state.store.meta.mark_failed(digest, time.time(), "fingerprint_mismatch", "corrupt")
        for url in ("/api/models/acme/failing", "/acme/failing/resolve/main/adapter_model.safetensors"):
            r = c.get(url)
            assert r.status_code == 422, (url, r.status_code)
        # A deleted tag is not found, whatever was cached.
        assert c.delete("/models/acme/failing:v1").status_code in (200, 204)
        assert c.get("/api/models/acme/failing").status_code == 404


def test_a_cached_adapter_names_its_base_once_the_base_is_registered(live, case):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        push(c, case.bundle.to_bytes(), "org/lora", "v1")
        info, _, got = fetch(c, "org/lora")
        assert got["adapter_config.json"].json()["base_model_name_or_path"] == "tiny-llama"
        assert info["mcnc"]["verified"] is False
        raw = save_safetensors({k: v.contiguous() for k, v in case.base.items()})
        assert c.post("/bases", params={"name": "org/base"}, content=raw, headers=OCTET).status_code == 201
        info, _, got = fetch(c, "org/lora")
    assert got["adapter_config.json"].json()["base_model_name_or_path"] == "org/base"
    assert info["mcnc"]["verified"] is True and got["adapter_model.safetensors"].headers["x-mcnc-verified"] == "true"


def test_adapter_files_on_disk_are_sent_zero_copy_with_ranges_and_etags(live, case, monkeypatch):
    sent: list[int] = []
    real = http_server._sendfile_all

    def counting(sock: int, fd: int, offset: int, count: int, timeout: float) -> None:
        sent.append(count)
        real(sock, fd, offset, count, timeout)

    monkeypatch.setattr(http_server, "_sendfile_all", counting)
    with httpx.Client(base_url=live.url, timeout=60) as c:
        push(c, case.bundle.to_bytes(), "acme/zc", "v1")
        url = "/acme/zc/resolve/v1/adapter_model.safetensors"
        head = c.head(url)
        full = c.get(url)
        data = full.content
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        assert full.headers["etag"] == head.headers["etag"] == etag and int(head.headers["content-length"]) == len(data)
        part = c.get(url, headers={"Range": "bytes=7-99", "If-Range": etag})
        tail = c.get(url, headers={"Range": "bytes=-5"})
        assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
        again = c.get(url)  # the same keep-alive connection after a zero-copy body
        metrics = c.get("/metrics").text
    assert sent == [len(data), 93, 5, len(data)]  # the HEAD and the 304 sent no body
    # zero-copy bodies count in mcnc_bytes_out_total like any other body
    resolve = [line for line in metrics.splitlines() if line.startswith("mcnc_bytes_out_total") and "resolve" in line]
    assert len(resolve) == 1 and float(resolve[0].rsplit(" ", 1)[1]) == 2 * len(data) + 93 + 5, resolve
    assert part.status_code == 206 and part.content == data[7:100]
    assert part.headers["content-range"] == f"bytes 7-99/{len(data)}"
    assert tail.content == data[-5:] and again.content == data
    assert live.app.state.adapters.disk_nbytes >= len(data)
