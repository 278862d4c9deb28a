"""The client against a hostile or broken server on loopback (issue 19 N2, N11).

Each test scripts the server's bytes (``tests/client/_hostile.py``): bodies that never end, sizes
that lie, drips, truncated chunked bodies, 429s. Limits are set through the ``MCNC_*`` environment,
as a user would. Behaviour is asserted before exception classes, so a run against code without
these bounds fails on what it did (bytes taken, seconds waited, files written), not on a name.
Memory bombs run in a subprocess under ``RLIMIT_AS``: nothing here allocates gigabytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save

import client
import mcnc_core as m
from mcnc_core.bundle import Bundle
from mcnc_core.manifest import TensorEntry
from tests.client._hostile import Hostile, Responder, answer, repeat, serve

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def make(h: Hostile, tmp_path: Path, **kw: Any) -> client.Client:
    return client.Client(h.url, cache_dir=tmp_path / "cache", progress=False, **kw)


def attempt(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """What ``fn`` raised (``None``: nothing) and how long it took."""
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def model_json(digest: str, size: int, num_params: int = 1) -> dict[str, Any]:
    return {"id": digest, "digest": f"sha256:{digest}", "size": size, "num_params": num_params}


def cache_files(tmp_path: Path) -> list[str]:
    blobs = tmp_path / "cache" / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


# -- N2: bodies ---------------------------------------------------------------------------------


def test_a_huge_json_body_is_refused_at_the_cap_not_buffered(tmp_path, monkeypatch):
    monkeypatch.setenv("MCNC_MAX_JSON_BYTES", str(MiB))

    def endless(r: Responder) -> None:  # 128 MiB of one JSON string, chunked: no length to refuse up front
        r.head(200, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        r.chunked(itertools.chain([b'{"id": "'], repeat(b"a", 128 * MiB), [b'"}']))

    def declared(r: Responder) -> None:  # declares 2 GiB, sends nothing
        r.head(200, {"Content-Type": "application/json", "Content-Length": str(2 << 30)})
        time.sleep(3)

    with Hostile() as h, make(h, tmp_path, retries=0) as c:
        h.routes["/models/m:latest"], h.routes["/models/big:latest"] = endless, declared
        exc, _ = attempt(lambda: c.info("m"))
        h.idle()
        assert h.sent["/models/m:latest"] < 32 * MiB  # the client hung up near its 1 MiB cap (+ socket buffers)
        assert isinstance(exc, client.ResponseTooLargeError) and exc.setting == "MCNC_MAX_JSON_BYTES"
        assert "1,048,576 B" in str(exc)
        exc, took = attempt(lambda: c.info("big"))
        assert took < 2  # refused on the declaration, without waiting for a byte
        assert isinstance(exc, client.ResponseTooLargeError) and "declares a body of 2,147,483,648 B" in str(exc)


def test_a_huge_error_body_is_refused_at_the_cap(tmp_path):
    def endless_error(r: Responder) -> None:
        r.head(500, {"Content-Type": "text/html", "Transfer-Encoding": "chunked"})
        r.chunked(repeat(b"<p>oops</p>", 128 * MiB))

    with Hostile() as h, make(h, tmp_path, retries=0) as c:
        h.routes["/models"] = endless_error
        exc, _ = attempt(c.list)
        h.idle()
        assert h.sent["/models"] < 32 * MiB
        assert isinstance(exc, client.ResponseTooLargeError) and "MCNC_MAX_ERROR_BYTES" in str(exc)


@pytest.mark.parametrize("lie", ["longer_than_declared", "garbage"])
def test_a_bundle_that_breaks_its_bounds_is_cut_off_and_never_cached(tmp_path, bundles, lie):
    data = bundles.full.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if lie == "longer_than_declared":  # the real bundle, then 128 MiB more, without a length
        declared, body = len(data), itertools.chain([data], repeat(b"\0", 128 * MiB))
        headers: dict[str, str] = {}
    else:  # 128 MiB of noise, declared consistently in the model info and the response
        declared, body = 128 * MiB, repeat(os.urandom(4096), 128 * MiB)
        headers = {"Content-Length": str(128 * MiB)}

    def bundle(r: Responder) -> None:
        r.head(200, headers)
        r.body(body)

    with Hostile() as h, make(h, tmp_path, retries=0) as c:
        h.routes["/models/m:latest"] = answer(model_json(digest, declared))
        h.routes[f"/bundles/{digest}"] = bundle
        exc, _ = attempt(lambda: c.load("m"))
        h.idle()
        assert h.sent[f"/bundles/{digest}"] < 32 * MiB  # checked as it streamed, not after 128 MiB
        assert cache_files(tmp_path) == []  # no blob, no partial file
        assert c.cache.read_ref("m", "latest") is None  # N11: no ref to a blob that failed
        assert isinstance(exc, client.IntegrityError)
        if lie == "garbage":
            assert "not a safetensors file" in str(exc)
        else:
            assert isinstance(exc, client.ResponseTooLargeError) and f"{len(data):,} B" in str(exc)


def test_the_ref_is_written_only_after_its_blob_checked_out(tmp_path, bundles):
    data = bundles.full.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    forged = bundles.deltas[0].to_bytes()  # a well-formed bundle, but not this digest's

    with Hostile() as h, make(h, tmp_path, retries=0) as c:
        h.routes["/models/m:latest"] = answer(model_json(digest, len(forged)))
        h.routes[f"/bundles/{digest}"] = serve(forged)
        with pytest.raises(client.IntegrityError, match=f"expected {digest}"):
            c.load("m")
        assert c.cache.read_ref("m", "latest") is None and cache_files(tmp_path) == []
        h.routes["/models/m:latest"] = answer(model_json(digest, len(data)))
        h.routes[f"/bundles/{digest}"] = serve(data)
        c.load("m")
        assert c.cache.read_ref("m", "latest") == digest and cache_files(tmp_path) == [digest]


def bomb(shape: tuple[int, int], rank: int, chunk_size: int) -> bytes:
    """A valid full-mode bundle of one low-rank tensor: a few KB that decode to ``shape`` (and its
    factors), as in tests/core/test_decode_bytes.py."""
    cfg = m.MCNCConfig(chunk_size=chunk_size, k=1, width=1, depth=1, rank=rank, mode="full")
    spec = cfg.generator_spec()
    n = TensorEntry("w.weight", shape, "F32", "mcnc", rank, 0, 0).chunks_needed(spec.chunk_size)
    entry = TensorEntry("w.weight", shape, "F32", "mcnc", rank, 0, n)
    fp = {"w.weight": [0.0] * 10}
    return Bundle(spec, cfg, (entry,), torch.zeros(n, 1), torch.zeros(n), {}, None, fp).to_bytes()


_VICTIM = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch, safetensors.torch, mcnc_core, client  # mapped before the limit is measured

    mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (1536 << 20), resource.RLIM_INFINITY))
    url, cache, refs = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = {}
    for ref in refs:
        try:
            client.Client(url, cache_dir=cache, progress=False, retries=0).load(ref)
            out[ref] = ["loaded", ""]
        except BaseException as exc:
            out[ref] = [type(exc).__name__, str(exc)[:400]]
    print(json.dumps(out))
    """
)


def test_memory_bombs_are_refused_before_allocating(tmp_path):
    """N2 (1.6e9 parameters in 6 KB) and N1 on the client (rank 4096: 8 GiB of factors for a 1 MiB
    tensor), under a 1.5 GiB address-space limit: a typed refusal, not an allocator failure."""
    bombs = {"params": bomb((40000, 40000), 1, 256), "rank": bomb((1, 262144), 4096, 2**20)}
    with Hostile() as h:
        for name, data in bombs.items():
            digest = hashlib.sha256(data).hexdigest()
            h.routes[f"/models/{name}:latest"] = answer(model_json(digest, len(data)))
            h.routes[f"/bundles/{digest}"] = serve(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
        out = subprocess.run(
            [sys.executable, "-c", _VICTIM, h.url, str(tmp_path / "cache"), "params", "rank"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(bombs["params"]) < 16_000 and len(bombs["rank"]) < 16_000
    for name in bombs:
        kind, message = result[name]
        assert kind == "InsufficientMemoryError", result
        assert "nothing was allocated" in message and "MCNC_MAX_LOAD_BYTES" in message


def test_max_load_bytes_bounds_a_load(tmp_path, bundles, monkeypatch):
    data = bundles.full.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Hostile() as h:
        h.routes["/models/m:latest"] = answer(model_json(digest, len(data)))
        h.routes[f"/bundles/{digest}"] = serve(data)
        monkeypatch.setenv("MCNC_MAX_LOAD_BYTES", "1000")
        with make(h, tmp_path) as c:
            exc, _ = attempt(lambda: c.load("m"))
            assert isinstance(exc, client.InsufficientMemoryError), exc
            assert exc.available == 1000 and exc.needed > bundles.full.reconstructed_nbytes
        monkeypatch.setenv("MCNC_MAX_LOAD_BYTES", str(exc.needed))
        with make(h, tmp_path) as c:
            assert torch.equal(c.load("m")["0.weight"], m.reconstruct(bundles.full)["0.weight"])


# -- N11: time, 429, truncation -----------------------------------------------------------------


def drip(body: bytes, *, every: float = 2.0, at_most: int = 6) -> Callable[[Responder], None]:
    """One byte every ``every`` seconds (``at_most`` of them, then the connection drops)."""

    def route(r: Responder) -> None:
        r.head(200, {"Content-Length": str(len(body)), "Content-Type": "application/json"})
        r.body((body[i : i + 1] for i in range(min(at_most, len(body)))), pause=every)

    return route


@pytest.mark.parametrize("where", ["bundle", "json_async"])
def test_a_dripping_server_fails_within_the_deadline(tmp_path, bundles, monkeypatch, where):
    monkeypatch.setenv("MCNC_DOWNLOAD_DEADLINE", "3")
    monkeypatch.setenv("MCNC_REQUEST_DEADLINE", "3")
    data = bundles.full.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with Hostile() as h:
        info = json.dumps(model_json(digest, len(data))).encode()
        h.routes["/models/m:latest"] = drip(info) if where == "json_async" else answer(model_json(digest, len(data)))
        h.routes[f"/bundles/{digest}"] = drip(data)
        if where == "bundle":
            with make(h, tmp_path, retries=0) as c:
                exc, took = attempt(lambda: c.load("m"))
        else:

            async def go() -> None:
                async with client.AsyncClient(h.url, cache_dir=tmp_path / "cache", progress=False, retries=0) as ac:
                    await ac.load("m")

            exc, took = attempt(lambda: asyncio.run(go()))
    assert took < 3 + 2 + 1  # the deadline, plus at most one drip interval to notice
    setting = "MCNC_DOWNLOAD_DEADLINE" if where == "bundle" else "MCNC_REQUEST_DEADLINE"
    assert isinstance(exc, client.DeadlineExceededError) and setting in str(exc)
    assert isinstance(exc, client.ConnectionFailedError)  # the CLI's "server unreachable", exit 3


def test_a_long_retry_after_is_not_waited_for(tmp_path):
    def limited(r: Responder) -> None:
        r.json({"error": {"code": "rate_limited", "message": "slow down"}}, 429, {"Retry-After": "60"})

    with Hostile() as h, make(h, tmp_path, retries=3) as c:
        h.routes["/models/m:latest"] = limited
        exc, took = attempt(lambda: c.load("m"))
        assert took < 5 and h.hits["/models/m:latest"] == 1  # not 3 x 60 s
    assert isinstance(exc, client.RateLimitError) and exc.retry_after == 60.0
    assert "MCNC_MAX_RETRY_AFTER=10 s" in str(exc)


def test_short_retry_afters_are_honoured_within_the_request_deadline(tmp_path, monkeypatch):
    monkeypatch.setenv("MCNC_REQUEST_DEADLINE", "2.5")

    def limited(r: Responder) -> None:
        r.json({"error": {"code": "rate_limited", "message": "slow down"}}, 429, {"Retry-After": "1"})

    with Hostile() as h, make(h, tmp_path, retries=5) as c:
        h.routes["/models"] = limited
        exc, took = attempt(c.list)
        assert 1.9 < took < 3 and h.hits["/models"] == 3  # waited 1 s twice; a third wait would overrun
    assert isinstance(exc, client.DeadlineExceededError) and isinstance(exc.__cause__, client.RateLimitError)


@pytest.mark.parametrize("cut", ["short", "long"])
def test_a_weights_body_that_breaks_its_framing_is_refused_even_unverified(tmp_path, cut):
    weights = save({"w": torch.arange(1000, dtype=torch.float32)})
    body = weights[: len(weights) // 2] if cut == "short" else weights + b"\0" * 100
    digest = "ab" * 32

    def chunked(r: Responder) -> None:  # a well-terminated chunked body: only the framing can tell
        r.head(200, {"Transfer-Encoding": "chunked", "ETag": '"w"'})
        r.chunked([body[i : i + 1000] for i in range(0, len(body), 1000)])

    dest = tmp_path / "w.safetensors"
    with Hostile() as h, make(h, tmp_path, retries=0) as c:
        h.routes[f"/models/{digest}/weights"] = chunked
        exc, _ = attempt(lambda: c.download_weights(digest, dest, verify=False))
        assert not dest.exists() and not Path(f"{dest}.incomplete").exists()
        assert isinstance(exc, client.IntegrityError)
        assert ("cut short" if cut == "short" else "more bytes than") in str(exc)
        h.routes[f"/models/{digest}/weights"] = serve(weights, {"Transfer-Encoding": "chunked"})
        c.download_weights(digest, dest, verify=False)  # whole: accepted
        assert dest.read_bytes() == weights


def test_limits_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv("MCNC_MAX_BUNDLE_BYTES", "4096")
    monkeypatch.setenv("MCNC_DOWNLOAD_DEADLINE", "2.5")
    limits = client.ClientLimits.from_env(max_json_bytes=10)
    assert (limits.max_bundle_bytes, limits.download_deadline, limits.max_json_bytes) == (4096, 2.5, 10)
    monkeypatch.setenv("MCNC_MAX_JSON_BYTES", "lots")
    with pytest.raises(client.InvalidArgumentError, match="MCNC_MAX_JSON_BYTES='lots' is not a whole number"):
        client.ClientLimits.from_env()
    with pytest.raises(client.InvalidArgumentError, match=r"request_deadline \(MCNC_REQUEST_DEADLINE\)"):
        client.ClientLimits(request_deadline=0)
