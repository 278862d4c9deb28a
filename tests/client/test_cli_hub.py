"""``mcnc push --file / push DIR``, ``mcnc push-base --name``, ``mcnc pull --base`` and the local hints
(exit 2), through the ``mcnc`` command in process against a live server on loopback.

What the server attached is read back over HTTP (``GET /files/{sha256}`` for the bytes) and from the
live server's own store (the tag's and the base name's file lists, as every Hub route reads them)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

import mcnc_core as m
from client import AsyncClient, Client, InvalidArgumentError, cli
from tests.client.test_cli import run, strict_json

pytestmark = pytest.mark.e2e

CONFIG = json.dumps({"model_type": "mlp", "hidden_size": 64}).encode()
TOKENIZER = json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode()
CARD = b"# acme/tiny\n\nA tiny model.\n"
DEAD = "http://127.0.0.1:9"  # nothing listens: a command that reaches the network fails with exit 3


def _common(live, tmp_path) -> tuple[str, ...]:
    return ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"))


def _server_bytes(live, sha: str) -> bytes:
    r = httpx.get(f"{live.url}/files/{sha}", timeout=10)
    assert r.status_code == 200, r.text
    return r.content


def _tag_files(live, name: str, tag: str) -> dict[str, bytes]:
    store = live.app.state.store
    return {f.name: _server_bytes(live, f.sha256) for f in store.meta.tag_files(name, tag)}


def test_push_with_files_round_trips_and_skips_stored_bytes(live, tmp_path, bundles, capsys):
    bundle = tmp_path / "tiny.mcnc"
    m.save_bundle(bundles.full, bundle)
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "tokenizer.json").write_bytes(TOKENIZER)
    files = ("--file", str(tmp_path / "config.json"), "--file", str(tmp_path / "tokenizer.json"))
    argv = ("push", str(bundle), "--name", "acme/tiny", "--tag", "v1", *files, *_common(live, tmp_path))
    code, out = run(capsys, *argv, "--json")
    assert code == 0, out
    data = strict_json(out)
    assert data["files"] == ["config.json", "tokenizer.json"] and data["created"] is True
    assert _tag_files(live, "acme/tiny", "v1") == {"config.json": CONFIG, "tokenizer.json": TOKENIZER}
    posts = live.requests("/files", "POST")
    assert posts == 2
    code, out = run(capsys, *argv[:5], "v2", *files, *_common(live, tmp_path))  # the same files on another tag
    assert code == 0 and "files: config.json, tokenizer.json" in out, out
    assert live.requests("/files", "POST") == posts  # HEAD found them: no byte sent again
    assert _tag_files(live, "acme/tiny", "v2") == {"config.json": CONFIG, "tokenizer.json": TOKENIZER}
    # a push without --file defines the tag's files: none
    code, _ = run(capsys, "push", str(bundle), "--name", "acme/tiny", "--tag", "v1", *_common(live, tmp_path))
    assert code == 0 and _tag_files(live, "acme/tiny", "v1") == {}


def test_push_dir_takes_its_one_bundle_and_the_sidecars_by_the_rule(live, tmp_path, bundles, capsys):
    d = tmp_path / "model"
    d.mkdir()
    m.save_bundle(bundles.full, d / "tiny.mcnc")
    for name, data in [("config.json", CONFIG), ("tokenizer.json", TOKENIZER), ("README.md", CARD),
                       ("spiece.model", b"\x00sp"), ("training_args.bin", b"\x01" * 8)]:  # fmt: skip
        (d / name).write_bytes(data)
    extra = tmp_path / "generation_config.json"
    extra.write_bytes(b'{"max_length": 8}')
    code, out = run(capsys, "push", str(d), "--name", "acme/tiny", "--file", str(extra), *_common(live, tmp_path),
                    "--json")  # fmt: skip
    assert code == 0, out
    data = strict_json(out)
    assert data["files"] == ["README.md", "config.json", "spiece.model", "tokenizer.json", "generation_config.json"]
    assert data["left_out"] == ["training_args.bin"] and data["bundle"] == str(d / "tiny.mcnc")
    got = _tag_files(live, "acme/tiny", "latest")
    assert got == {"README.md": CARD, "config.json": CONFIG, "spiece.model": b"\x00sp", "tokenizer.json": TOKENIZER,
                   "generation_config.json": b'{"max_length": 8}'}  # fmt: skip


def _peft_dir(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 4)}, d / "adapter_model.safetensors")
    return d


def test_hints_exit_2_before_any_request(tmp_path, bundles, capsys):
    """Every refusal here is local: the endpoint is dead, and the exit code is 2, not 3."""
    common = ("--endpoint", DEAD, "--cache-dir", str(tmp_path / "cache"))
    adapter = _peft_dir(tmp_path)
    base = tmp_path / "base.safetensors"
    save_file(bundles.base, base)
    bundle = tmp_path / "b.mcnc"
    m.save_bundle(bundles.full, bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    two = tmp_path / "two"
    two.mkdir()
    m.save_bundle(bundles.full, two / "a.mcnc")
    m.save_bundle(bundles.deltas[0], two / "b.mcnc")
    based = tmp_path / "based"
    based.mkdir()
    save_file(bundles.base, based / "model.safetensors")
    cases = [
        (("push", str(adapter), "--name", "acme/lora"), f"convert it: mcnc convert {adapter} --base BASE --data"),
        (("push", str(adapter / "adapter_model.safetensors")), "convert it: mcnc convert"),
        (("push", str(base), "--name", "acme/base"), f"did you mean `mcnc push-base {base} --name acme/base`?"),
        (("push", str(based), "--name", "acme/base"), f"did you mean `mcnc push-base {based} --name acme/base`?"),
        (("push", str(empty), "--name", "x"), "holds no .mcnc bundle"),
        (("push", str(two), "--name", "x"), "holds 2 bundles (a.mcnc, b.mcnc)"),
        (("push", str(bundle), "--file", str(tmp_path / "nope.json"), "--name", "x"), "is not a file"),
        (("push", str(bundle), "--file", str(base)), "needs a name"),
        (("push", str(bundle), "--name", "x", "--file", str(bundle)), "generated by the server"),
        (("push-base", str(bundle), "--name", "acme/base"), f"did you mean `mcnc push {bundle} --name acme/base`?"),
        (("push-base", str(two), "--name", "acme/base"), "exactly one .safetensors base file (found: none)"),
        (("pull", "acme/lora:v1", "--base", str(tmp_path / "nope.safetensors"), "-o", "w.st"), "no such file"),
        (("pull", "acme/lora:v1", "--base", str(base), "--server-side", "-o", "w.st"), "drop --base"),
    ]
    for argv, needle in cases:
        code, out = run(capsys, *argv, *common)
        assert code == cli.EXIT_BAD_INPUT and needle in out and "\n" not in out.strip(), (argv, out)


def test_push_base_with_a_name_files_and_a_dir(live, tmp_path, bundles, capsys):
    base = tmp_path / "base.safetensors"
    save_file(bundles.base, base)
    (tmp_path / "config.json").write_bytes(CONFIG)
    argv = ("push-base", str(base), "--name", "acme/base", "--file", str(tmp_path / "config.json"))
    code, out = run(capsys, *argv, *_common(live, tmp_path), "--json")
    assert code == 0, out
    data = strict_json(out)
    digest = bundles.deltas[0].base.sha256
    assert data["digest"] == digest and data["name"] == "acme/base" and data["created"] is True
    assert [(f["name"], f["size"]) for f in data["files"]] == [("config.json", len(CONFIG))]
    store = live.app.state.store
    assert store.meta.base_by_name("acme/base").digest == digest
    assert store.meta.base_name("acme/base").commit == data["commit"]
    assert {f.name: _server_bytes(live, f.sha256) for f in store.meta.base_files("acme/base")} == {
        "config.json": CONFIG
    }
    # a directory with one safetensors file and its sidecars, under another name
    d = tmp_path / "base-dir"
    d.mkdir()
    save_file(bundles.base, d / "model.safetensors")
    (d / "config.json").write_bytes(CONFIG)
    (d / "tokenizer_config.json").write_bytes(b"{}")
    code, out = run(capsys, "push-base", str(d), "--name", "acme/base2", *_common(live, tmp_path))
    assert code == 0 and "as acme/base2" in out and "files: config.json, tokenizer_config.json" in out, out
    assert [f.name for f in store.meta.base_files("acme/base2")] == ["config.json", "tokenizer_config.json"]
    # a bundle repo's name is the server's to refuse (409: exit 3), and a base's name takes no bundle
    bundle = tmp_path / "b.mcnc"
    m.save_bundle(bundles.full, bundle)
    code, out = run(capsys, "push", str(bundle), "--name", "acme/base", *_common(live, tmp_path))
    assert code == cli.EXIT_SERVER and "409 conflict" in out and "registered base" in out
    run(capsys, "push", str(bundle), "--name", "acme/m", *_common(live, tmp_path))
    code, out = run(capsys, "push-base", str(base), "--name", "acme/m", *_common(live, tmp_path))
    assert code == cli.EXIT_SERVER and "bundle repo" in out


def test_pull_with_a_local_base_equals_the_local_reconstruction(live, tmp_path, bundles, capsys):
    delta = tmp_path / "d.mcnc"
    m.save_bundle(bundles.deltas[0], delta)
    base = tmp_path / "base.safetensors"
    save_file(bundles.base, base)
    common = _common(live, tmp_path)
    assert run(capsys, "push", str(delta), "--name", "acme/d", "--tag", "v1", *common)[0] == 0
    out_path = tmp_path / "w.safetensors"
    # the server has no base: without --base the pull says how to give it
    code, out = run(capsys, "pull", "acme/d:v1", "-o", str(out_path), *common)
    assert code == cli.EXIT_NOT_FOUND and f"mcnc pull acme/d:v1 --base BASE.safetensors -o {out_path}" in out, out
    asked = live.requests("/bases/{digest}")  # that pull asked the server for the base (404)
    code, out = run(capsys, "pull", "acme/d:v1", "--base", str(base), "-o", str(out_path), *common, "--json")
    assert code == 0, out
    got = load_file(out_path)
    want = m.reconstruct(bundles.deltas[0], base=bundles.base)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert live.requests("/bases/{digest}") == asked  # with --base, the base is never asked for
    # a wrong base is refused by digest (exit 2), and nothing is written
    wrong = tmp_path / "wrong.safetensors"
    save_file({k: v + 1 for k, v in bundles.base.items()}, wrong)
    other = tmp_path / "w2.safetensors"
    code, out = run(capsys, "pull", "acme/d:v1", "--base", str(wrong), "-o", str(other), *common)
    assert code == cli.EXIT_BAD_INPUT and "wrong base" in out and not other.exists(), out


def test_client_push_files_api(live, tmp_path, bundles):
    with Client(live.url, cache_dir=tmp_path / "c1") as c:
        with pytest.raises(InvalidArgumentError, match="needs a name"):
            c.push(bundles.full, files=[("config.json", CONFIG)])
        with pytest.raises(InvalidArgumentError, match="given twice"):
            c.push(bundles.full, name="acme/x", files=[("config.json", CONFIG), ("config.json", b"{}")])
        c.push(bundles.full, name="acme/x", tag="v1", files=[("config.json", CONFIG), ("README.md", CARD)])
        info = c.push_base(bundles.base, name="acme/xb", files=[("config.json", CONFIG)])
    assert _tag_files(live, "acme/x", "v1") == {"config.json": CONFIG, "README.md": CARD}
    assert info.name == "acme/xb" and [f.sha256 for f in info.files] == [hashlib.sha256(CONFIG).hexdigest()]

    async def push_async() -> None:
        async with AsyncClient(live.url, cache_dir=tmp_path / "c2") as ac:
            await ac.push(bundles.deltas[1], name="acme/y", tag="v1", files=[("tokenizer.json", TOKENIZER)])

    asyncio.run(push_async())
    assert _tag_files(live, "acme/y", "v1") == {"tokenizer.json": TOKENIZER}
