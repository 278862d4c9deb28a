"""``mcnc serve`` registration and ``python -m service`` as a real process (the container command)."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import register, serve

ROOT = Path(__file__).resolve().parents[2]


def test_register_adds_serve_with_options():
    parser = argparse.ArgumentParser(prog="mcnc")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9", "--data-dir", "/x"])
    assert (args.host, args.port, args.data_dir, args.func) == ("0.0.0.0", 9, "/x", serve)
    defaults = parser.parse_args(["serve"])
    assert (defaults.host, defaults.port, defaults.data_dir) == (None, None, None)  # env decides


def test_entry_point_is_declared():
    text = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; the project supports 3.10
    block = text.split('[project.entry-points."mcnc.commands"]', 1)[1].split("\n[", 1)[0]
    assert 'serve = "service.cli:register"' in [line.strip() for line in block.strip().splitlines()]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
    env.update(PYTHONPATH=str(ROOT), MCNC_DATA_DIR=str(tmp_path / "data"), **extra)
    return env


def test_insecure_bind_refused_by_the_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--host", "0.0.0.0"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "MCNC_ALLOW_INSECURE" in proc.stderr and "MCNC_API_TOKENS" in proc.stderr


@pytest.mark.e2e
def test_python_m_service_serves_on_loopback(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["checks"]["storage"] == "ok"
        assert (tmp_path / "data" / "mcnc.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode in (0, -15)
