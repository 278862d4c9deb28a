"""Client and CLI against a live server holding a delta bundle but not its base: the PEFT adapter is
exported locally from the bundle alone, and ``load(base=...)`` uses the caller's base, never the server's."""

from __future__ import annotations

import asyncio
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

import client
import mcnc_core as m
from mcnc_core.reconstruct import base_names
from tests._adapters import LoraDelta, llama, lora_delta
from tests.client.test_cli import run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def case() -> LoraDelta:
    return lora_delta()


def merged_equals_reconstruct(directory, case: LoraDelta) -> None:
    merged = peft.PeftModel.from_pretrained(llama(), str(directory)).merge_and_unload().state_dict()
    for name, t in m.reconstruct(case.bundle, base=case.base).items():
        assert torch.equal(merged[name], t), name


def no_base_or_adapter_requests(live) -> None:
    assert live.requests("/bases/{digest}") == 0 and live.requests("/bases/{digest}", "HEAD") == 0
    assert live.requests("/api/models/{repo_id}/revision/{revision}") == 0


def test_download_adapter_fetches_only_the_bundle(live, case, tmp_path):
    with client.Client(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
        info = c.push(case.bundle, name="acme/lora", tag="v1")
        assert info.base == case.bundle.base.sha256  # stored without its base
        c.cache.remove(info.digest)  # so the bundle really comes over the wire
        out = c.download_adapter("acme/lora:v1", tmp_path / "adapter", dtype="float32")
        report = c.last_report
        assert [e.refs for e in c.cache.entries()] == [["acme/lora:v1"]]  # refs/acme/lora/v1
    assert report.bytes_received == info.size and report.full_weights_bytes == sum(
        p.stat().st_size for p in out.iterdir()
    )
    assert live.requests("/bundles/{ref}") == 1
    no_base_or_adapter_requests(live)
    local = m.export_peft(case.bundle, tmp_path / "local", dtype=torch.float32)
    assert (out / "adapter_model.safetensors").read_bytes() == (local / "adapter_model.safetensors").read_bytes()
    merged_equals_reconstruct(out, case)


def test_async_download_adapter_and_default_bfloat16(live, case, tmp_path):
    async def main():
        async with client.AsyncClient(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
            await c.push(case.bundle, name="lora")
            return await c.download_adapter("lora", tmp_path / "a")

    out = asyncio.run(main())
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == "tiny-llama"
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {torch.bfloat16}


def test_full_bundle_is_not_an_adapter(live, bundles, tmp_path):
    with client.Client(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
        c.push(bundles.full, name="full")
        with pytest.raises(client.AdapterExportError, match="full-mode bundle is a whole model"):
            c.download_adapter("full", tmp_path / "x")
        with pytest.raises(client.InvalidArgumentError, match="full-mode bundle: it reads no base"):
            c.load("full", base={})
    assert not (tmp_path / "x").exists()


def test_cli_pull_format_peft(live, case, tmp_path, capsys):
    with client.Client(live.url, cache_dir=tmp_path / "c0", progress=False) as c:
        c.push(case.bundle, name="acme/lora")
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    code, text = run(capsys, "pull", "acme/lora", "--format", "peft", "-o", str(out), "--dtype", "float32", *common)
    assert code == 0 and "PEFT adapter" in text
    merged_equals_reconstruct(out, case)
    code, text = run(capsys, "pull", "acme/lora", "--format", "peft", "-o", str(out), "--server-side", *common)
    assert code == 2 and "drop --server-side" in text


@pytest.mark.parametrize("form", ["state_dict", "model"])
def test_load_with_the_callers_base_never_requests_it(live, case, tmp_path, form):
    with client.Client(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
        c.push(case.bundle, name="acme/lora")
        expected = m.reconstruct(case.bundle, base=case.base)
        if form == "state_dict":
            state = c.load("acme/lora", base=case.base)
        else:  # the base model itself, decoded into in place
            model = llama()
            state = c.load("acme/lora", model=model, base=model)
            assert state["model.layers.0.self_attn.q_proj.weight"].data_ptr() == (
                model.model.layers[0].self_attn.q_proj.weight.data_ptr()
            )
        assert "base" not in c.last_report.cached
    for name, t in expected.items():
        assert torch.equal(state[name], t), name
    no_base_or_adapter_requests(live)


def test_a_wrong_base_is_refused_naming_both_digests(live, case, tmp_path):
    wrong = llama(seed=1)
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with client.Client(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
        c.push(case.bundle, name="lora")
        with pytest.raises(client.BaseMismatchError) as info:
            c.load("lora", model=wrong, base=wrong)
    wrong_digest = m.state_digest({n: before[n] for n in base_names(case.bundle)})
    assert case.bundle.base.sha256 in str(info.value) and wrong_digest in str(info.value)
    assert isinstance(info.value, client.IntegrityError)
    assert all(torch.equal(wrong.state_dict()[k], v) for k, v in before.items())  # nothing written
    no_base_or_adapter_requests(live)


def test_load_without_a_base_anywhere_says_how_to_pass_it(live, case, tmp_path):
    with client.Client(live.url, cache_dir=tmp_path / "cache", progress=False) as c:
        c.push(case.bundle, name="lora")
        with pytest.raises(client.BaseNotFoundError, match=r"pass the base you have, load\(ref, base=\.\.\.\)"):
            c.load("lora")
