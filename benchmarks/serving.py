"""Serving benchmark: cold reconstruction vs warm hits per tier vs a plain static-file server.

For a small model and a large one (~100M parameters; ``--quick`` uses ~8M), in one run:

- ``cold``: the first request after start (reconstruction streamed as it happens);
- ``memory``: warm hits from tier 1 (in-process tensors);
- ``redis``: warm hits from tier 2 (tier 1 disabled), when a Redis answers at ``--redis``;
- ``static``: the same bytes saved to a file and served by uvicorn + Starlette ``StaticFiles``;
- ``32 clients``: concurrent warm requests on tier 1, errors and p50/p99 latency.

Each server runs as its own process on 127.0.0.1 (``python -m service``, the container command).
Prints a table and ratios to the static server; ``--json PATH`` saves the numbers.
Usage: ``python benchmarks/serving.py [--quick] [--redis redis://127.0.0.1:6379/15]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def build_bundle(layers: int, width: int) -> tuple[bytes, int]:
    import torch
    from torch import nn

    import mcnc_core as m

    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    m.compress(net, m.MCNCConfig())
    bundle = m.export_bundle(net)
    return bundle.to_bytes(), bundle.num_params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A server subprocess on a free loopback port, up when ``url/ready_path`` answers 200."""

    def __init__(self, args: list[str], env: dict[str, str], ready_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MCNC_")}
        full_env.update(env, PYTHONPATH=str(ROOT))
        cmd = [a.replace("{port}", str(self.port)) for a in args]
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {cmd}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def mcnc_server(data_dir: Path, **env: str) -> Proc:
    args = [sys.executable, "-m", "service", "--port", "{port}", "--log-level", "warning"]
    return Proc(args, {"MCNC_DATA_DIR": str(data_dir), **env}, "/health/live")


def static_server(directory: Path) -> Proc:
    code = (
        "import sys, uvicorn; from starlette.applications import Starlette; "
        "from starlette.routing import Mount; from starlette.staticfiles import StaticFiles; "
        "uvicorn.run(Starlette(routes=[Mount('/', StaticFiles(directory=sys.argv[1]))]), "
        "host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')"
    )
    (directory / "ping").write_text("ok")
    return Proc([sys.executable, "-c", code, str(directory), "{port}"], {}, "/ping")


def fetch(client: httpx.Client, url: str) -> tuple[float, float, int]:
    """``(time to first body byte, total seconds, bytes)``."""
    t0 = time.perf_counter()
    ttfb, n = 0.0, 0
    with client.stream("GET", url) as r:
        r.raise_for_status()
        for piece in r.iter_raw():  # as received: no client-side buffering
            if n == 0:
                ttfb = time.perf_counter() - t0
            n += len(piece)
    return ttfb, time.perf_counter() - t0, n


def measure(client: httpx.Client, url: str, repeats: int) -> dict[str, float]:
    runs = [fetch(client, url) for _ in range(repeats)]
    ttfb = statistics.median(r[0] for r in runs)
    secs = statistics.median(r[1] for r in runs)
    return {"ttfb_ms": ttfb * 1e3, "seconds": secs, "MB_s": runs[0][2] / secs / 1e6, "bytes": runs[0][2]}


def concurrent(client: httpx.Client, url: str, clients: int, per_client: int) -> dict[str, float]:
    def one(_: int) -> tuple[bool, float]:
        t0 = time.perf_counter()
        try:
            with client.stream("GET", url) as r:  # read and discard: 32 large bodies would not fit in memory
                n = sum(len(piece) for piece in r.iter_raw())
            return r.status_code == 200 and n == int(r.headers["content-length"]), time.perf_counter() - t0
        except httpx.HTTPError:
            return False, time.perf_counter() - t0

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients * per_client)))
    lat = sorted(r[1] for r in results)
    return {
        "requests": len(results),
        "errors": sum(not ok for ok, _ in results),
        "p50_ms": lat[len(lat) // 2] * 1e3,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
    }


def run_model(label: str, data: bytes, args: argparse.Namespace, work: Path) -> dict[str, object]:
    out: dict[str, object] = {"model": label}
    repeats = 3 if args.quick else 5
    limits = httpx.Limits(max_connections=64)
    with httpx.Client(timeout=600, limits=limits) as c:
        # tier 1 server: cold, then memory hits, then 32 clients
        srv = mcnc_server(work / f"{label}-mem", MCNC_MEMORY_CACHE_BYTES=str(4 << 30))
        try:
            c.post(srv.url + "/bundles", params={"name": "m"}, content=data).raise_for_status()
            weights = srv.url + "/models/m/weights"
            out["cold"] = measure(c, weights, 1)
            out["memory"] = measure(c, weights, repeats)
            body = c.get(weights).content
            per_client = 1 if len(body) > 100 << 20 else (2 if args.quick else 4)
            out["32_clients_memory"] = concurrent(c, weights, 32, per_client)
        finally:
            srv.close()
        # a second cold start: TTFB must not grow with model size
        srv = mcnc_server(work / f"{label}-mem", MCNC_MEMORY_CACHE_BYTES="0")
        try:
            out["cold_uncached"] = measure(c, srv.url + "/models/m/weights", 1)
        finally:
            srv.close()
        if args.redis:
            prefix = f"mcnc-bench-{uuid.uuid4().hex[:8]}:"
            env = {"MCNC_MEMORY_CACHE_BYTES": "0", "MCNC_REDIS_URL": args.redis, "MCNC_REDIS_PREFIX": prefix}
            srv = mcnc_server(work / f"{label}-redis", **env)
            try:
                c.post(srv.url + "/bundles", params={"name": "m"}, content=data).raise_for_status()
                weights = srv.url + "/models/m/weights"
                c.get(weights).raise_for_status()  # cold: fills Redis
                out["redis"] = measure(c, weights, repeats)
            finally:
                srv.close()
                _clean_redis(args.redis, prefix)
        static_dir = work / f"{label}-static"
        static_dir.mkdir()
        (static_dir / "weights.safetensors").write_bytes(body)
        srv = static_server(static_dir)
        try:
            out["static"] = measure(c, srv.url + "/weights.safetensors", repeats)
        finally:
            srv.close()
    return out


def _clean_redis(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a ~8M-parameter large model and fewer repeats")
    p.add_argument("--redis", default=None, help="Redis URL for the tier-2 run (skipped when unset)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    models = [("small", 2, 512), ("large", 2, 2048) if args.quick else ("large", 6, 4096)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, layers, width in models:
            t0 = time.perf_counter()
            data, n_params = build_bundle(layers, width)
            print(f"# {label}: {n_params / 1e6:.1f}M params, bundle {len(data) / 1e6:.2f} MB "
                  f"(built in {time.perf_counter() - t0:.1f}s)", flush=True)  # fmt: skip
            res = run_model(label, data, args, Path(tmp))
            res["params"] = n_params
            results.append(res)
            static = res["static"]["MB_s"]  # type: ignore[index]
            print(f"{'tier':<16}{'TTFB ms':>10}{'MB/s':>10}{'x static':>10}")
            for tier in ("cold", "cold_uncached", "memory", "redis", "static"):
                if tier in res:
                    r = res[tier]  # type: ignore[assignment]
                    print(f"{tier:<16}{r['ttfb_ms']:>10.1f}{r['MB_s']:>10.0f}{r['MB_s'] / static:>10.2f}")  # type: ignore[index]
            cc = res["32_clients_memory"]
            print(f"32 clients (memory): {cc['requests']} requests, {cc['errors']} errors, "  # type: ignore[index]
                  f"p50 {cc['p50_ms']:.0f} ms, p99 {cc['p99_ms']:.0f} ms", flush=True)  # type: ignore[index]  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
