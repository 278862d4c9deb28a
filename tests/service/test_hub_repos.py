"""Whole-model Hub repos and sidecars over real HTTP on loopback (issue 18 items 3-5): a full-mode
bundle's ``model.safetensors`` streamed from the reconstruction (size and ETag before any byte, HEAD,
Range, 304), a named base's stored file, adapters with their sidecars, ``:float32`` factors,
``X-MCNC-Verified``, nothing that failed its fingerprint served, tree with a path, paths-info, and
``GET /models/{ref}`` files with ``GET|HEAD /models/{ref}/files/{filename}``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import mcnc_core as m
from mcnc_core.peft import peft_adapter_files
from service import Settings
from service.storage import commit_id
from tests._adapters import CODES, LoraDelta, llama, lora_delta, train
from tests._live import LiveServer

pytestmark = pytest.mark.e2e
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


@pytest.fixture(scope="module")
def full() -> m.Bundle:
    model = llama(seed=2)
    m.compress(model, m.MCNCConfig(**CODES))
    train(model, steps=2)
    return m.export_bundle(model)


@pytest.fixture
def c(tmp_path) -> Iterator[httpx.Client]:
    with LiveServer(Settings(data_dir=tmp_path / "server")) as srv, httpx.Client(base_url=srv.url, timeout=60) as cl:
        cl.live = srv  # type: ignore[attr-defined]
        yield cl


def upload(c: httpx.Client, data: bytes) -> str:
    r = c.post("/files", content=data, headers=OCTET)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["sha256"])


def push(c: httpx.Client, data: bytes, name: str, tag: str, files: dict[str, bytes] | None = None) -> str:
    params = [("name", name), ("tag", tag)] + [("file", f"{n}:{upload(c, b)}") for n, b in (files or {}).items()]
    r = c.post("/bundles", params=params, content=data, headers=OCTET)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def header_dtypes(data: bytes) -> set[str]:
    n = int.from_bytes(data[:8], "little")
    return {v["dtype"] for k, v in json.loads(data[8 : 8 + n]).items() if k != "__metadata__"}


CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode()


def test_a_full_mode_bundle_is_a_model_repo_streamed_from_its_reconstruction(c, full):
    digest = push(c, full.to_bytes(), "org/full", "v1", {"config.json": CONFIG, "README.md": b"# tiny\n"})
    url = "/org/full/resolve/main/model.safetensors"
    full_runs = {"kind": "full"}
    registry = c.live.app.state.metrics.registry  # type: ignore[attr-defined]
    before = registry.get_sample_value("mcnc_reconstructions_total", full_runs) or 0
    head = c.head(url)
    assert head.status_code == 200 and head.headers["x-mcnc-verified"] == "true"
    sidecars = [(n, hashlib.sha256(b).hexdigest()) for n, b in [("README.md", b"# tiny\n"), ("config.json", CONFIG)]]
    assert head.headers["x-repo-commit"] == commit_id(digest, sidecars)
    info = c.get("/api/models/org/full").json()
    tree = c.get("/api/models/org/full/tree/v1").json()
    # size and ETag are known from the manifest: nothing was reconstructed for HEAD, info and tree
    assert (registry.get_sample_value("mcnc_reconstructions_total", full_runs) or 0) == before
    assert [f["path"] for f in tree] == ["README.md", "config.json", "model.safetensors"]
    assert info["library_name"] == "transformers" and info["pipeline_tag"] == "text-generation"
    assert info["config"] == json.loads(CONFIG) and info["mcnc"]["kind"] == "model"
    assert {s["rfilename"]: s["size"] for s in info["siblings"]}["model.safetensors"] == int(
        head.headers["content-length"]
    )

    body = c.get(url)
    assert body.headers["etag"] == head.headers["etag"] and len(body.content) == int(head.headers["content-length"])
    served = load_safetensors(body.content)
    for name, t in m.reconstruct(full).items():  # the dtype rule: each tensor's trained dtype
        assert torch.equal(served[name], t), name
    part = c.get(url, headers={"Range": "bytes=100-4099", "If-Range": head.headers["etag"]})
    assert part.status_code == 206 and part.content == body.content[100:4100]
    assert c.get(url, headers={"If-None-Match": head.headers["etag"]}).status_code == 304
    assert c.get("/org/full/resolve/v1/README.md").content == b"# tiny\n"

    exact = c.head("/org/full/resolve/v1:float32/model.safetensors")
    assert exact.headers["x-repo-commit"][-1] == "1" and exact.headers["etag"] != head.headers["etag"]
    assert header_dtypes(c.get("/org/full/resolve/v1:float32/model.safetensors").content) == {"F32"}


def test_a_named_base_is_a_model_repo_serving_its_stored_file(c, case):
    raw = save_safetensors({k: v.contiguous() for k, v in case.base.items()})
    params = [("name", "org/base"), ("file", f"config.json:{upload(c, CONFIG)}")]
    assert c.post("/bases", params=params, content=raw, headers=OCTET).status_code == 201
    info = c.get("/api/models/org/base").json()
    assert info["mcnc"]["kind"] == "base" and info["library_name"] == "transformers"
    model = {s["rfilename"]: s for s in info["siblings"]}["model.safetensors"]
    assert model["lfs"]["oid"] == hashlib.sha256(raw).hexdigest() and model["size"] == len(raw)
    r = c.get("/org/base/resolve/main/model.safetensors")
    assert r.content == raw and r.headers["etag"] == f'"{hashlib.sha256(raw).hexdigest()}"'
    assert c.get("/org/base/resolve/main/model.safetensors", headers={"Range": "bytes=-16"}).content == raw[-16:]
    r = c.get("/org/base/resolve/main:float32/model.safetensors")
    assert r.status_code == 404 and r.headers["x-error-code"] == "RevisionNotFound"

    # An adapter of that base now names it, and is verified against it.
    push(c, case.bundle.to_bytes(), "org/lora", "v1")
    cfg = c.get("/org/lora/resolve/v1/adapter_config.json").json()
    assert cfg["base_model_name_or_path"] == "org/base" and cfg["task_type"] == "CAUSAL_LM"
    info = c.get("/api/models/org/lora").json()
    assert info["mcnc"]["verified"] is True and info["cardData"]["base_model"] == "org/base"


def test_adapters_list_their_sidecars_serve_float32_on_request_and_say_they_are_unverified(c, case):
    push(c, case.bundle.to_bytes(), "org/lora", "v1", {"config.json": CONFIG, "README.md": b"card"})
    r = c.get("/api/models/org/lora/revision/v1")
    assert r.headers["x-mcnc-verified"] == "false" and r.json()["mcnc"]["verified"] is False  # no base here
    assert r.json()["library_name"] == "peft" and r.json()["pipeline_tag"] == "text-generation"
    names = [f["path"] for f in c.get("/api/models/org/lora/tree/v1").json()]
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.json"]
    cfg = c.get("/org/lora/resolve/v1/adapter_config.json").json()
    assert cfg["base_model_name_or_path"] == "tiny-llama"  # its base is registered under no name

    default = c.get("/org/lora/resolve/v1/adapter_model.safetensors")
    exact = c.get("/org/lora/resolve/v1:float32/adapter_model.safetensors")
    assert default.headers["x-mcnc-verified"] == "false"
    assert header_dtypes(default.content) == {"BF16"} and header_dtypes(exact.content) == {"F32"}
    plain = default.headers["x-repo-commit"]
    assert exact.headers["x-repo-commit"] == plain[:39] + "1" and plain == r.json()["sha"]
    local = peft_adapter_files(case.bundle, dtype=torch.float32)["adapter_model.safetensors"]
    assert exact.content == local

    # paths-info: form (as huggingface_hub sends it) and JSON; missing paths are left out
    form = c.post("/api/models/org/lora/paths-info/v1", data={"paths": ["config.json", "nope"], "expand": "false"})
    assert [e["path"] for e in form.json()] == ["config.json"] and form.headers["x-mcnc-verified"] == "false"
    js = c.post("/api/models/org/lora/paths-info/v1", json={"paths": ["adapter_config.json"]})
    assert js.json()[0]["size"] == len(c.get("/org/lora/resolve/v1/adapter_config.json").content)
    bad = c.post("/api/models/org/lora/paths-info/v1", json={"paths": 3})
    assert bad.status_code == 400 and "list of file paths" in bad.json()["error"]
    # tree with a path: the root lists everything, anything else is not a folder here
    assert len(c.get("/api/models/org/lora/tree/v1/").json()) == 4
    r = c.get("/api/models/org/lora/tree/v1/config.json")
    assert r.status_code == 404 and r.headers["x-error-code"] == "EntryNotFound" and "is a file" in r.json()["error"]


def test_a_bundle_failing_its_fingerprint_is_never_served_on_the_hub_routes(tmp_path, full):
    data = bytearray(full.to_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begin, end = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")[0]
    data[8 + n + (begin + end) // 2 // 4 * 4 + 3] ^= 0x3F  # the exponent of a code
    with (
        LiveServer(Settings(data_dir=tmp_path / "s", verify_max_params=0)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        push(c, bytes(data), "org/bad", "v1")  # stored unchecked (over the verify limit)
        for method, path in [("GET", "/api/models/org/bad"), ("HEAD", "/org/bad/resolve/v1/model.safetensors"),
                             ("GET", "/org/bad/resolve/v1/model.safetensors")]:  # fmt: skip
            r = c.request(method, path)
            assert r.status_code == 422 and r.headers["x-error-code"] == "fingerprint_mismatch", (path, r.text)
        assert "fingerprint" in c.get("/api/models/org/bad/tree/v1").json()["error"]


def test_models_record_lists_sidecars_and_serves_them(c, full):
    push(c, full.to_bytes(), "org/full", "v1", {"config.json": CONFIG})
    rec = c.get("/models/org/full:v1").json()
    assert rec["files"] == [{"name": "config.json", "sha256": hashlib.sha256(CONFIG).hexdigest(), "size": len(CONFIG)}]
    assert c.get(f"/models/sha256:{rec['id']}").json()["files"] == []  # files belong to tags
    url = "/models/org/full:v1/files/config.json"
    r = c.get(url)
    assert r.content == CONFIG and r.headers["etag"] == f'"{hashlib.sha256(CONFIG).hexdigest()}"'
    assert c.head(url).headers["content-length"] == str(len(CONFIG))
    assert c.get(url, headers={"Range": "bytes=2-5"}).content == CONFIG[2:6]
    assert c.get(url, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    missing = c.get("/models/org/full:v1/files/tokenizer.json")
    assert missing.status_code == 404 and "config.json" in missing.json()["error"]["message"]
    assert c.get("/models/org/nothing:v1/files/config.json").json()["error"]["code"] == "model_not_found"
    ui = c.get("/ui/models/org/full?tag=v1").text
    assert 'href="/models/org/full%3Av1/files/config.json"' in ui


def test_a_sidecar_digest_may_carry_its_sha256_prefix(c, full):
    sha = upload(c, CONFIG)
    for i, value in enumerate((f"config.json:sha256:{sha}", f"config.json:SHA256:{sha.upper()}")):
        params = [("name", "org/prefixed"), ("tag", f"v{i}"), ("file", value)]
        r = c.post("/bundles", params=params, content=full.to_bytes(), headers=OCTET)
        assert r.status_code in (200, 201), r.text
        assert c.get(f"/models/org/prefixed:v{i}").json()["files"][0] == {
            "name": "config.json", "sha256": sha, "size": len(CONFIG)
        }  # fmt: skip
    bad = c.post("/bundles", params={"name": "org/prefixed", "file": "config.json:sha256:xyz"}, content=b"x")
    assert bad.status_code == 400 and "<filename>:<sha256>" in bad.text
