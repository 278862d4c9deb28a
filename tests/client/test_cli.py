"""``mcnc push | pull | cache`` against a live server, through the same argparse wiring as ``mcnc``."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

import mcnc_core as m
from client import cli

pytestmark = pytest.mark.e2e


def run(capsys, *argv: str) -> tuple[int, str]:
    """Returns the exit code and stdout + stderr."""
    parser = argparse.ArgumentParser(prog="mcnc")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_push_pull_and_cache(live, tmp_path, bundles, capsys):
    path = tmp_path / "mlp.mcnc"
    m.save_bundle(bundles.full, path)
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"), "--json")
    code, out = run(capsys, "push", str(path), "--name", "mlp", "--tag", "v1", *common)
    assert code == 0 and json.loads(out)["created"] is True

    local, server = tmp_path / "local.safetensors", tmp_path / "server.safetensors"
    code, out = run(capsys, "pull", "mlp:v1", "-o", str(local), *common)
    assert code == 0 and json.loads(out)["output"] == str(local)
    code, _ = run(capsys, "pull", "mlp:v1", "-o", str(server), "--server-side", "--dtype", "float16", *common)
    assert code == 0
    ref = m.reconstruct(bundles.full)
    assert all(torch.equal(load_file(local)[k], ref[k]) for k in ref)
    assert load_file(server)["0.weight"].dtype == torch.float16

    code, out = run(capsys, "cache", "ls", "--cache-dir", str(tmp_path / "cache"), "--json")
    entries = json.loads(out)["entries"]
    assert [(e["kind"], e["refs"]) for e in entries] == [("bundle", ["mlp:v1"])]
    code, _ = run(capsys, "cache", "rm", "mlp:v1", "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    code, out = run(capsys, "cache", "rm", "mlp:v1", "--cache-dir", str(tmp_path / "cache"))
    assert code == cli.EXIT_NOT_FOUND and "nothing matched" in out
    code, out = run(capsys, "cache", "prune", "--max-bytes", "0", "--cache-dir", str(tmp_path / "cache"), "--json")
    assert code == 0 and json.loads(out)["removed"] == [entries[0]["digest"]]


def test_exit_codes_for_missing_models_and_bad_files(live, tmp_path, capsys):
    common = ("--endpoint", live.url, "--cache-dir", str(tmp_path / "cache"))
    code, out = run(capsys, "pull", "ghost", "-o", str(tmp_path / "x.safetensors"), *common)
    assert code == cli.EXIT_NOT_FOUND and "404 bundle_not_found: HEAD /bundles/ghost failed" in out
    bad = tmp_path / "bad.mcnc"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    code, out = run(capsys, "push", str(bad), *common)
    assert code == cli.EXIT_SERVER and "invalid_bundle" in out  # refused by the server's strict reader
    code, out = run(capsys, "pull", "mlp", "-o", str(tmp_path / "y.safetensors"), "--offline", *common)
    assert code == cli.EXIT_NOT_FOUND and "offline" in out
