"""The fleet half of ``registry_scale.py``: N adapters on a live server, read by 32 vLLM-style readers.

What ``run`` measures (issue 22 §1), in one run:

- a real server (``python -m service`` in a subprocess, HTTP on loopback) on a throwaway
  PostgreSQL database (SQLite when none answers, said so), file blobs and Redis (its own db index and
  key prefix; only those keys are deleted after), filled over HTTP (``POST /bundles?name=&tag=``) with
  N delta bundles of a real adapter shape (default LLaMA-2-7B, r=16 on q/k/v/o, the paper's LLaMA
  generator k=5, d=5000, width 32, depth 2: 197 kB bundles exporting to 33.6 MB bf16 adapters), each
  under its own name with 2-3 tags (``v1``, ``v2``, and ``main`` for every third). The bundle is built
  once from a manifest (no training, no model) and each of the N gets its own random codes (the
  ``alpha`` bytes of the template spliced with seeded uniform numbers: a new digest each);
- push rate: first pushes (``v1``: new bytes) and tag pushes (the same bytes again under ``v2`` /
  ``main``: the server dedups), by ``--pushers`` concurrent clients; metadata size
  (``pg_database_size``) and blob bytes; bytes on disk vs the same N adapters as PEFT bf16 files;
- vLLM's fetch: the requests ``huggingface_hub`` 2.5's ``snapshot_download`` makes (``GET
  /api/models/{repo}/revision/main``, ``GET /api/models/{repo}/tree/{sha}``, then ``HEAD`` and ``GET
  /{repo}/resolve/{sha}/{file}`` per file), by ``--readers`` threads, each on its own keep-alive
  connection (``--client socket``: raw sockets, bodies counted into a 1 MiB buffer, the least client
  CPU per byte; ``--client httpx``: an ``httpx.Client`` per thread). Real ``snapshot_download`` is run on
  two repos first and its files compared byte for byte with what nginx serves;
- COLD: ``--hot`` repos never fetched before (their first fetch exports them), all readers at once;
  WARM: the same repos again (now exported: the server keeps them in its adapter disk tier, sized
  to hold them), ``--warm-fetches`` random picks per reader; NGINX: the Debian nginx serving the very
  files the server exported (fetched once over HTTP, written under ``<root>/<repo>/``), one GET per
  file (no Hub metadata requests: the best case for the baseline). Warm and nginx alternate over
  ``--rounds`` rounds; reported: p50/p99 latency of a whole adapter fetch, adapters/s, server CPU per
  adapter, and the ratios to nginx's adapters/s in the same round (targets: warm >= 0.8x, cold >= 0.3x);
- where a target is missed: a timing breakdown of one export in this process (factor decode,
  safetensors assembly, the two file hashes) and the CPU per adapter of each server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks.hub_readers import fetch_hub, fetch_static, readers, request_breakdown
from benchmarks.serving import find_nginx, mcnc_server, nginx_server

# hidden, intermediate, layers, vocab (LLaMA-2-7B; "tiny" for --quick)
SHAPES = {"llama2-7b": (4096, 11008, 32, 32000), "tiny": (512, 1376, 2, 1000)}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
BASE_NAME = "meta-llama/Llama-2-7b-hf"
WARM_TARGET, COLD_TARGET = 0.8, 0.3


def _names(hidden: int, inter: int, layers: int, vocab: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A LLaMA state dict's tensors, in order."""
    yield "model.embed_tokens.weight", (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in TARGETS:
            yield p + f"self_attn.{m}.weight", (hidden, hidden)
        yield p + "mlp.gate_proj.weight", (inter, hidden)
        yield p + "mlp.up_proj.weight", (inter, hidden)
        yield p + "mlp.down_proj.weight", (hidden, inter)
        yield p + "input_layernorm.weight", (hidden,)
        yield p + "post_attention_layernorm.weight", (hidden,)
    yield "model.norm.weight", (hidden,)
    yield "lm_head.weight", (vocab, hidden)


class Template:
    """One delta bundle of ``shape`` built from its manifest; ``variant(i)`` is the same bundle with the
    codes of seed ``i`` (valid bytes: the strict reader accepts them; a new digest per ``i``).

    The fingerprint holds random numbers of the real format: the base (LLaMA-2-7B) is not on this
    machine, so the server accepts the bundles as deltas whose base is not here (``unverified``)."""

    def __init__(self, shape: str, rank: int = 16) -> None:
        from mcnc_core import MCNCConfig
        from mcnc_core.bundle import Bundle
        from mcnc_core.fingerprint import N_SAMPLES
        from mcnc_core.manifest import BaseRef, TensorEntry

        k, d = 5, 5000
        cfg = MCNCConfig(mode="delta", rank=rank, k=k, chunk_size=d, width=32, depth=2,
                         targets=tuple(f"*.{m}.weight" for m in TARGETS), base_name=BASE_NAME)  # fmt: skip
        entries, off = [], 0
        for name, s in _names(*SHAPES[shape]):
            if name.rpartition(".")[0].rpartition(".")[2] in TARGETS:
                c = TensorEntry(name, s, "BF16", "mcnc", rank).chunks_needed(d)
                entries.append(TensorEntry(name, s, "BF16", "mcnc", rank, off, c))
                off += c
            else:
                entries.append(TensorEntry(name, s, "BF16", "base"))
        g = torch.Generator().manual_seed(0)
        alpha = torch.rand(off, k, generator=g) * 2 - 1
        beta = torch.rand(off, generator=g) * 0.02
        fp = {e.name: torch.randn(2 + N_SAMPLES, generator=g, dtype=torch.float64).tolist() for e in entries}
        self.bundle = Bundle(
            cfg.generator_spec(), cfg, tuple(entries), alpha, beta, {}, BaseRef(BASE_NAME, "0" * 64), fp
        )
        self.data = self.bundle.to_bytes()
        raw = alpha.numpy().astype("<f4").tobytes()
        self.offset, self.count = self.data.index(raw), alpha.numel()
        self.lora_params = sum(e.factor_params for e in entries if e.storage == "mcnc")

    def variant(self, i: int) -> bytes:
        codes = np.random.default_rng(i).uniform(-1, 1, self.count).astype("<f4").tobytes()
        return self.data[: self.offset] + codes + self.data[self.offset + len(codes) :]


def repo(i: int) -> str:
    return f"org{i % 97}/adapter-{i}"


# ------------------------------------------------------------------------------------------ stores
@contextmanager
def throwaway_postgres(admin_url: str) -> Iterator[str | None]:
    """A fresh database (migrated) on the PostgreSQL at ``admin_url``, dropped after; ``None`` when none answers."""
    from sqlalchemy import create_engine, text

    from service.storage.metadata import MetadataStore

    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        db = f"mcnc_fleet_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
    except Exception as exc:  # no PostgreSQL: the caller falls back to SQLite and says so
        print(f"# fleet: postgresql unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]}); SQLite used")
        yield None
        return
    url = admin_url.rsplit("/", 1)[0] + "/" + db
    try:
        MetadataStore(url, auto_upgrade=True).close()  # the server does not migrate PostgreSQL itself
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def db_bytes(url: str) -> int:
    from sqlalchemy import create_engine, text

    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        eng.dispose()


def redis_url_or_none(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
        return url
    except (redis.RedisError, OSError) as exc:
        print(f"# fleet: redis unavailable at {url} ({type(exc).__name__}); server runs without tier 2")
        return None


def clean_redis(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    for lo in range(0, len(keys), 1000):
        r.delete(*keys[lo : lo + 1000])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ pushes
def _push(url: str, tpl: Template, jobs: list[tuple[int, str]], expect: int, pushers: int) -> tuple[float, dict]:
    """``POST /bundles?name=&tag=`` of each job's bytes by ``pushers`` clients: (pushes/s, digest by index)."""
    q: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
    for job in jobs:
        q.put(job)
    failures: list[str] = []
    digests: dict[int, str] = {}

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while (job := q.get()) is not None:
                i, tag = job
                r = c.post("/bundles", params={"name": repo(i), "tag": tag}, content=tpl.variant(i),
                           headers={"Content-Type": "application/octet-stream"})  # fmt: skip
                if r.status_code != expect:
                    failures.append(f"{repo(i)}:{tag} -> {r.status_code} {r.text[:200]}")
                else:
                    digests[i] = r.json()["digest"].removeprefix("sha256:")

    threads = [threading.Thread(target=worker) for _ in range(pushers)]
    t0 = time.perf_counter()
    for t in threads:
        q.put(None)
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} pushes failed, first: {failures[0]}")
    return len(jobs) / secs, digests


def push_all(url: str, db_url: str, tpl: Template, n: int, pushers: int, tag_pushes: int) -> dict[str, float]:
    """Every name's ``v1`` over HTTP (new bytes); then ``v2`` and every third's ``main``: over HTTP (the
    same bytes again: the server dedups) for the first ``tag_pushes`` names, inserted into the tags table
    for the others (time: a tag push costs what a push does)."""
    from sqlalchemy import create_engine, insert

    from service.storage.schema import tags

    first, digests = _push(url, tpl, [(i, "v1") for i in range(n)], 201, pushers)
    extra = [(i, t) for i in range(n) for t in (("v2", "main") if i % 3 == 0 else ("v2",))]
    over_http = [j for j in extra if j[0] < tag_pushes]
    again, _ = _push(url, tpl, over_http, 200, pushers) if over_http else (float("nan"), {})
    now = time.time()
    rows = [{"name": repo(i), "tag": t, "digest": digests[i], "updated_at": now} for i, t in extra if i >= tag_pushes]
    if rows:
        eng = create_engine(db_url)
        try:
            with eng.begin() as conn:
                for lo in range(0, len(rows), 5000):
                    conn.execute(insert(tags), rows[lo : lo + 5000])
        finally:
            eng.dispose()
    return {"push_bundles_per_s": first, "tag_pushes_per_s": again, "tag_pushes": len(over_http),
            "tags": n + len(extra), "tags_inserted": len(rows)}  # fmt: skip


# ------------------------------------------------------------------------------------------ checks
def export_for_nginx(url: str, names: list[str], root: Path) -> list[str]:
    """Each adapter's files as the server serves them, written under ``root/<repo>/`` (ETag = sha256 checked)."""
    files: list[str] = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for name in names:
            sha = c.get(f"/api/models/{name}/revision/main").raise_for_status().json()["sha"]
            tree = c.get(f"/api/models/{name}/tree/{sha}").raise_for_status().json()
            files = [f["path"] for f in tree]
            (root / name).mkdir(parents=True, exist_ok=True)
            for f in files:
                r = c.get(f"/{name}/resolve/{sha}/{f}").raise_for_status()
                if hashlib.sha256(r.content).hexdigest() != r.headers["etag"].strip('"'):
                    raise RuntimeError(f"{name}/{f}: body does not match its ETag")
                (root / name / f).write_bytes(r.content)
    return files


def hf_check(url: str, names: list[str], root: Path, cache: Path) -> str:
    """Real ``huggingface_hub.snapshot_download`` of ``names``: its files must equal nginx's copies."""
    import huggingface_hub

    for name in names:
        local = Path(huggingface_hub.snapshot_download(repo_id=name, endpoint=url, cache_dir=cache))
        for f in (root / name).iterdir():
            if (local / f.name).read_bytes() != f.read_bytes():
                raise RuntimeError(f"snapshot_download of {name} gave another {f.name}")
    return f"huggingface_hub {huggingface_hub.__version__} snapshot_download of {len(names)} repos: same bytes"


def export_breakdown(tpl: Template) -> dict[str, float]:
    """Where one cold export's time goes, in this process (``torch`` threads as the server's)."""
    from mcnc_core.peft import peft_adapter_files

    t0 = time.perf_counter()
    files = peft_adapter_files(tpl.bundle, dtype=torch.bfloat16)
    t1 = time.perf_counter()
    for data in files.values():
        hashlib.sha256(data).hexdigest()
    t2 = time.perf_counter()
    for data in files.values():
        hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    t3 = time.perf_counter()
    return {"decode_and_assemble_ms": 1e3 * (t1 - t0), "sha256_ms": 1e3 * (t2 - t1), "git_sha1_ms": 1e3 * (t3 - t2),
            "torch_threads": torch.get_num_threads()}  # fmt: skip


# ------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    tpl = Template(args.shape)
    n = args.fleet_n
    out: dict[str, Any] = {"shape": args.shape, "n": n, "readers": args.readers, "hot": args.hot,
                           "client": args.client, "bundle_bytes": len(tpl.data), "lora_params": tpl.lora_params,
                           "loadavg_start": os.getloadavg()}  # fmt: skip
    print(f"# fleet: {args.shape} r=16 q/k/v/o, {tpl.lora_params / 1e6:.1f}M LoRA params, bundle "
          f"{len(tpl.data):,} B (template {time.perf_counter() - t0:.2f} s)", flush=True)  # fmt: skip
    rng = random.Random(0)
    hot = [repo(i) for i in rng.sample(range(n), args.hot)]
    redis = redis_url_or_none(args.redis) if args.redis else None
    prefix = f"mcnc-fleet-{uuid.uuid4().hex[:8]}:"
    with throwaway_postgres(args.pg) if args.pg else _none() as pg_url:
        db_url = pg_url or f"sqlite:///{work / 'meta.sqlite3'}"
        out["database"] = "postgresql" if pg_url else "sqlite"
        out["redis"] = redis is not None
        adapter_guess = 2 * tpl.lora_params + (1 << 20)
        env = {"MCNC_DATABASE_URL": db_url, "MCNC_BLOB_URL": (work / "blobs").as_uri(),
               "MCNC_ADAPTER_CACHE_BYTES": "0",  # every adapter on the disk tier (served from disk, like nginx)
               "MCNC_ADAPTER_DISK_BYTES": str(int(1.5 * args.hot * adapter_guess) + (64 << 20))}  # fmt: skip
        if redis:
            env.update(MCNC_REDIS_URL=redis, MCNC_REDIS_PREFIX=prefix)
        servers = []
        try:
            srv = mcnc_server(work / "data", **env)
            servers.append(srv)
            url = f"http://127.0.0.1:{srv.ports['mcnc']}"
            out.update(push_all(url, db_url, tpl, n, args.pushers, args.tag_pushes))
            print(f"# fleet: pushed {n:,} bundles at {out['push_bundles_per_s']:.1f}/s, {out['tags']:,} tags "
                  f"({out['tag_pushes']:,} tag pushes at {out['tag_pushes_per_s']:.1f}/s, "
                  f"{out['tags_inserted']:,} inserted)", flush=True)  # fmt: skip
            out["db_bytes"], out["blob_bytes"] = db_bytes(db_url), dir_bytes(work / "blobs")
            cold = readers(srv.ports["mcnc"], srv.proc.pid, hot, args.readers, fetch_hub, args.client)
            out["cold"] = cold
            print(f"# fleet: cold {cold['adapters_per_s']:.2f} adapters/s ({cold['errors']} errors)", flush=True)
            root = work / "static"
            files = export_for_nginx(url, hot, root)
            out["adapter_bytes"] = sum((root / hot[0] / f).stat().st_size for f in files)
            binary = find_nginx()
            if binary is None:
                raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
            ngx = nginx_server(binary, root, work / "nginx")
            servers.append(ngx)
            out["hf_check"] = hf_check(url, hot[:2], root, work / "hf-cache")
            print(f"# fleet: {out['hf_check']}", flush=True)
            out["warm"], out["nginx"] = [], []
            for r in range(args.rounds):
                jobs = [rng.choice(hot) for _ in range(args.readers * args.warm_fetches)]
                legs = [("warm", srv.ports["mcnc"], srv.proc.pid, fetch_hub),
                        ("nginx", ngx.ports["nginx"], ngx.proc.pid, fetch_static(files))]  # fmt: skip
                for what, port, pid, fetch in legs[r % 2 :] + legs[: r % 2]:
                    out[what].append(readers(port, pid, jobs, args.readers, fetch, args.client))
                print(f"# fleet: round {r + 1}/{args.rounds}: warm {out['warm'][-1]['adapters_per_s']:.1f}, "
                      f"nginx {out['nginx'][-1]['adapters_per_s']:.1f} adapters/s", flush=True)  # fmt: skip
            out["requests_ms"] = request_breakdown(srv.ports["mcnc"], hot[0], 20)
        finally:
            for s in reversed(servers):
                s.close()
            if redis:
                clean_redis(redis, prefix)
    out["breakdown"] = export_breakdown(tpl)
    out["loadavg_end"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - t0
    return out


@contextmanager
def _none() -> Iterator[None]:
    yield None


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds, per-round ratios to nginx, and the verdicts."""
    med = lambda legs, k: statistics.median(x[k] for x in legs)  # noqa: E731
    warm_r = [w["adapters_per_s"] / g["adapters_per_s"] for w, g in zip(out["warm"], out["nginx"], strict=True)]
    nginx_med = med(out["nginx"], "adapters_per_s")
    cold_r = out["cold"]["adapters_per_s"] / nginx_med
    return {"warm_ratio_median": statistics.median(warm_r), "warm_ratios": warm_r, "cold_ratio": cold_r,
            "warm_met": statistics.median(warm_r) >= WARM_TARGET, "cold_met": cold_r >= COLD_TARGET,
            "nginx_adapters_per_s": nginx_med}  # fmt: skip


def report(out: dict[str, Any]) -> None:
    s = out["summary"] = summary(out)
    n, peft = out["n"], out["n"] * out["adapter_bytes"]
    stored = out["blob_bytes"] + out["db_bytes"]
    print(
        f"\nfleet: {n:,} {out['shape']} r=16 q/k/v/o adapters on {out['database']} + file blobs"
        f"{' + Redis' if out['redis'] else ''}; {out['readers']} readers ({out['client']} client), hot set {out['hot']}"
    )
    print(f"  push {out['push_bundles_per_s']:,.1f} bundles/s (new bytes), tag pushes {out['tag_pushes_per_s']:,.1f}/s,"
          f" {out['tags']:,} tags")  # fmt: skip
    print(f"  metadata {out['db_bytes'] / 1e6:.1f} MB ({out['db_bytes'] / n:,.0f} B per adapter); blobs "
          f"{out['blob_bytes'] / 1e9:.2f} GB ({out['blob_bytes'] / n:,.0f} B each)")  # fmt: skip
    print(f"  bytes on disk: mcnc {stored / 1e9:.2f} GB vs PEFT bf16 {peft / 1e9:.1f} GB "
          f"({out['adapter_bytes']:,} B each): {peft / stored:.0f}x smaller")  # fmt: skip
    print(f"  {'fetch':<8}{'adapters/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'srv CPU ms/adapter':>20}{'errors':>8}")
    rows = [("cold", [out["cold"]]), ("warm", out["warm"]), ("nginx", out["nginx"])]
    for what, legs in rows:
        cells = [statistics.median(x[k] for x in legs) for k in ("adapters_per_s", "p50_ms", "p99_ms",
                                                                 "server_cpu_ms_per_adapter")]  # fmt: skip
        errs = sum(x["errors"] for x in legs)
        print(f"  {what:<8}{cells[0]:>12.1f}{cells[1]:>10.0f}{cells[2]:>10.0f}{cells[3]:>20.1f}{errs:>8}")
    per = " / ".join(f"{r:.2f}" for r in s["warm_ratios"])
    print(f"  warm / nginx {s['warm_ratio_median']:.2f} (rounds {per}): target >= {WARM_TARGET}: "
          f"{'met' if s['warm_met'] else 'MISSED'}")  # fmt: skip
    print(f"  cold / nginx {s['cold_ratio']:.2f}: target >= {COLD_TARGET}: {'met' if s['cold_met'] else 'MISSED'}")
    cells = ", ".join(f"{k} {v:.1f}" for k, v in out["requests_ms"].items())
    print(f"  one warm fetch's requests alone on one connection, median ms: {cells}")
    b = out["breakdown"]
    print(f"  one export here ({b['torch_threads']} torch threads): decode + safetensors "
          f"{b['decode_and_assemble_ms']:.0f} ms, sha256 {b['sha256_ms']:.0f} ms, "
          f"git sha1 {b['git_sha1_ms']:.0f} ms")  # fmt: skip
    la = " ".join(f"{x:.1f}" for x in out["loadavg_start"])
    lb = " ".join(f"{x:.1f}" for x in out["loadavg_end"])
    print(f"  {out['hf_check']}; load average {la} -> {lb}; {out['seconds']:.0f} s")
