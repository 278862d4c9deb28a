"""The ``mcnc`` command end to end (``mcnc_core.cli.main``, in process) against a live server."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import mcnc_core as m
from client import cli
from mcnc_core.cli import main
from service import Settings
from tests._live import LiveServer

pytestmark = pytest.mark.e2e


def run(capsys, *argv: str) -> tuple[int, str]:
    """Returns the exit code and stdout + stderr; an uncaught exception (a traceback) fails the test."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def strict_json(text: str):
    """``json.loads`` that refuses ``Infinity``/``NaN`` (Python's json accepts them by default)."""

    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def pushed(live, tmp_path, bundles, capsys):
    """``mlp:v1`` pushed through the CLI; returns the common options."""
    path = tmp_path / "mlp.mcnc"
    m.save_bundle(bundles.full, path)
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"))
    code, out = run(capsys, "push", str(path), "--name", "mlp", "--tag", "v1", *common, "--json")
    assert code == 0, out
    data = strict_json(out)
    assert data["created"] is True and data["tags"] == [{**data["tags"][0], "name": "mlp", "tag": "v1"}]
    return common


def test_push_pull_and_cache(pushed, tmp_path, bundles, capsys):
    local, server = tmp_path / "local.safetensors", tmp_path / "server.safetensors"
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(local), *pushed, "--json")
    data = strict_json(out)  # the bundle came from the push: nothing downloaded, saving is null, not Infinity
    assert code == 0 and data["output"] == str(local) and data["bytes_received"] == 0 and data["saving"] is None
    code, _ = run(capsys, "pull", "mlp:v1", "-o", str(server), "--server-side", "--dtype", "float16", *pushed)
    assert code == 0
    ref = m.reconstruct(bundles.full)
    assert all(torch.equal(load_file(local)[k], ref[k]) for k in ref)
    assert load_file(server)["0.weight"].dtype == torch.float16

    cache = ("--cache-dir", str(tmp_path / "cache"))
    code, out = run(capsys, "cache", "ls", *cache, "--json")
    entries = strict_json(out)["entries"]
    assert [(e["kind"], e["refs"]) for e in entries] == [("bundle", ["mlp:v1"])]
    code, _ = run(capsys, "cache", "rm", "mlp:v1", *cache)
    assert code == 0
    code, out = run(capsys, "cache", "rm", "mlp:v1", *cache)
    assert code == cli.EXIT_NOT_FOUND and "nothing in" in out
    code, out = run(capsys, "cache", "rm", entries[0]["digest"][:16], *cache)  # the prefix `cache ls` prints
    assert code == 0 and out.split() == [entries[0]["digest"]]


def test_prune_older_than_zero_days_removes_everything(pushed, tmp_path, capsys):
    cache = ("--cache-dir", str(tmp_path / "cache"))
    code, out = run(capsys, "cache", "prune", "--older-than-days", "0", *cache, "--json")
    assert code == 0 and len(strict_json(out)["removed"]) == 1
    assert strict_json(run(capsys, "cache", "ls", *cache, "--json")[1])["entries"] == []


def test_missing_name_lists_its_tags_in_one_line(pushed, tmp_path, capsys):
    code, out = run(capsys, "pull", "mlp", "-o", str(tmp_path / "x.safetensors"), *pushed)
    assert code == cli.EXIT_NOT_FOUND and "did you mean mlp:v1?" in out and "'latest'" in out
    assert out.count("\n") == 1 and out.startswith("mcnc pull: not found: 404 model_not_found")
    code, out = run(capsys, "pull", "ghost", "-o", str(tmp_path / "x.safetensors"), *pushed)
    assert code == cli.EXIT_NOT_FOUND and "no model named 'ghost'" in out and "mcnc ls" in out
    code, out = run(capsys, "info", "mlp:v2", *pushed)
    assert code == cli.EXIT_NOT_FOUND and "did you mean mlp:v1?" in out


def test_output_paths(pushed, tmp_path, capsys):
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(tmp_path / "new_dir" / "x.safetensors"), *pushed)
    assert code == 0 and (tmp_path / "new_dir" / "x.safetensors").is_file()
    (tmp_path / "a_file").write_text("")
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(tmp_path / "a_file" / "x.safetensors"), *pushed)
    assert code == cli.EXIT_BAD_INPUT and out.startswith("mcnc pull: error:") and out.count("\n") == 1


def test_ls_info_rm(pushed, live, tmp_path, bundles, capsys):
    tagged = dataclasses.replace(bundles.full, metadata={"x-dataset": "mnist1d"})
    path = tmp_path / "tagged.mcnc"
    m.save_bundle(tagged, path)
    assert run(capsys, "push", str(path), "--name", "acme/tagged", *pushed)[0] == 0
    code, out = run(capsys, "ls", *pushed, "--json")
    assert code == 0 and [(i["name"], i["tag"]) for i in strict_json(out)["items"]] == [
        ("acme/tagged", "latest"), ("mlp", "v1")]  # fmt: skip
    code, out = run(capsys, "info", "acme/tagged", *pushed)
    assert code == 0 and "x-dataset   mnist1d" in out and "acme/tagged:latest" in out
    data = strict_json(run(capsys, "info", "acme/tagged", *pushed, "--json")[1])
    assert data["metadata"] == {"x-dataset": "mnist1d"} and data["tags"][0]["name"] == "acme/tagged"
    code, out = run(capsys, "rm", "mlp:v1", *pushed)
    assert code == 0 and "deleted tag mlp:v1" in out
    code, out = run(capsys, "rm", "mlp:v1", *pushed)
    assert code == cli.EXIT_NOT_FOUND


def test_server_down_falls_back_on_the_cache_with_a_warning(pushed, tmp_path, capsys):
    dead = ("--endpoint", "http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache"))  # port 9: nothing listens
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(tmp_path / "x.safetensors"), *dead)
    assert code == 0 and "mcnc: warning:" in out and "using the cached mlp:v1" in out
    code, out = run(capsys, "pull", "never:seen", "-o", str(tmp_path / "y.safetensors"), *dead)
    assert code == cli.EXIT_SERVER and "server unreachable" in out and "MCNC_ENDPOINT" in out


def test_offline_messages_name_the_real_reason(pushed, tmp_path, capsys):
    code, out = run(capsys, "push", str(tmp_path / "mlp.mcnc"), *pushed, "--offline")
    assert code == cli.EXIT_NOT_FOUND and "needs the server" in out and "not in the cache" not in out
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(tmp_path / "w"), "--server-side", *pushed, "--offline")
    assert "needs the server" in out and "not in the cache" not in out
    code, out = run(capsys, "pull", "mlp:v9", "-o", str(tmp_path / "w"), *pushed, "--offline")
    assert code == cli.EXIT_NOT_FOUND and "'mlp:v9' is not in the cache" in out


def test_tokens_login_and_logout(tmp_path, bundles, capsys, monkeypatch):
    monkeypatch.setenv("MCNC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MCNC_TOKEN", raising=False)
    path = tmp_path / "mlp.mcnc"
    m.save_bundle(bundles.full, path)
    settings = Settings(data_dir=tmp_path / "server", api_tokens='{"s3cret": ["read", "write"]}')
    with LiveServer(settings) as srv:
        common = ("--endpoint", srv.url, "--cache-dir", str(tmp_path / "cache"))
        code, out = run(capsys, "push", str(path), "--name", "mlp", *common)
        assert code == cli.EXIT_SERVER and "no token was sent" in out and "MCNC_TOKEN" in out and "mcnc login" in out
        code, out = run(capsys, "login", "--token", "wrong", *common)
        assert code == cli.EXIT_SERVER and "refused the token from token=" in out
        assert not (tmp_path / "home" / "token").exists()
        code, out = run(capsys, "login", "--token", "s3cret", *common)
        assert code == 0 and (tmp_path / "home" / "token").stat().st_mode & 0o777 == 0o600
        assert run(capsys, "push", str(path), "--name", "mlp", *common)[0] == 0  # the token file is used
        code, out = run(capsys, "rm", "mlp", *common)
        assert code == cli.EXIT_SERVER and "lacks the scope" in out and "'admin'" in out
        code, out = run(capsys, "logout", *common)
        assert code == 0 and not (tmp_path / "home" / "token").exists()


def test_push_base(live, tmp_path, bundles, capsys):
    from safetensors.torch import save_file

    save_file(bundles.base, tmp_path / "base.safetensors")
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"), "--json")
    code, out = run(capsys, "push-base", str(tmp_path / "base.safetensors"), *common)
    assert code == 0 and strict_json(out)["digest"] == bundles.deltas[0].base.sha256


def test_bad_bundles_and_inspect_metadata(live, tmp_path, bundles, capsys):
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"))
    bad = tmp_path / "bad.mcnc"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, out = run(capsys, "push", str(bad), *common)
    assert code == cli.EXIT_SERVER and "invalid_bundle" in out  # refused by the server's strict reader
    code, out = run(capsys, "inspect", str(bad))
    assert code == cli.EXIT_BAD_INPUT and out.startswith("mcnc inspect: error:")
    path = tmp_path / "tagged.mcnc"
    m.save_bundle(dataclasses.replace(bundles.full, metadata={"x-dataset": "mnist1d"}), path)
    code, out = run(capsys, "inspect", str(path))
    assert code == 0 and "x-dataset   mnist1d" in out
    assert strict_json(run(capsys, "inspect", str(path), "--json")[1])["metadata"] == {"x-dataset": "mnist1d"}


def test_help_version_and_offline_commands_import_neither_torch_nor_fastapi(tmp_path):
    code = (
        "import sys\n"
        "from mcnc_core.cli import main\n"
        "for argv in (['--help'], ['--version'], ['pull', '--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"assert main(['cache', 'ls', '--cache-dir', {str(tmp_path)!r}]) == 0\n"
        f"assert main(['logout']) == 0\n"
        "print('HEAVY', sorted({'torch', 'fastapi'} & set(sys.modules)))\n"
    )
    env = {**os.environ, "MCNC_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert (
        "usage: mcnc" in out
        and f"mcnc {m.__version__}" in out
        and "mcnc serve --data-dir" in out
        and "mcnc pull mlp:v1" in out
    )
    assert out.splitlines()[-1] == "HEAVY []"
