"""Registry at fleet scale: metadata at 100,000 rows (SQLite, PostgreSQL) and 10,000 adapters served against nginx.

Two parts (``--parts``, default both; issue 22 §1):

``metadata`` (this file):

- ``MetadataStore`` (``service/storage/metadata.py``, the server's one SQLAlchemy store) on a
  fresh SQLite file and on a fresh PostgreSQL database (``--pg``, trust auth; skipped, and said
  so, when none answers), both filled with ``--rows`` bundle rows (default 100,000; delta bundles
  of LLaMA-2-7B r=16 q/k/v/o shape: 16.8M params, ~0.3 MB each) under as many names with 2-3
  tags each (``v1``, ``v2``, sometimes ``main``), inserted in bulk;
- push rate: ``--pushes`` ``add_bundle`` calls (one transaction each, what a push does);
- p50/p99 of the reads the Hub and the API make, on random names: resolve a tag (``get_tag``),
  a name's tags (``tags_named``), a digest's tags (``tags_for``), a page of the listing at a random
  offset (``list_tags``, limit 50), against the target p99 <= 10 ms;
- each read's query plan (``EXPLAIN``), printed with a verdict: index or full scan;
- the metadata's size on disk (SQLite file; ``pg_total_relation_size`` of the tables).

``fleet`` (``benchmarks/registry_fleet.py``, see its docstring): a live server on PostgreSQL + file
blobs + Redis filled over HTTP with ``--fleet-n`` adapters (default 10,000 LLaMA-2-7B r=16 q/k/v/o),
push rate, metadata and blob bytes vs PEFT bf16 files, and ``--readers`` (32) concurrent readers
making ``snapshot_download``'s requests, cold and warm, against nginx serving the same exported files.

    python benchmarks/registry_scale.py                  # 100,000 rows; 10,000 adapters (~15 min on 2 cores)
    python benchmarks/registry_scale.py --quick          # 2,000 rows; 16 tiny adapters: what tests/benchmarks runs
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from benchmarks import registry_fleet as fleet  # noqa: E402
from service.storage.metadata import MetadataStore  # noqa: E402
from service.storage.refs import BundleRecord  # noqa: E402
from service.storage.schema import bundles, tags  # noqa: E402

# LLaMA-2-7B, r=16 on q/k/v/o: 32 layers x 4 modules x (16 x 4096 + 4096 x 16) params
ADAPTER_PARAMS = 32 * 4 * 2 * 16 * 4096
ADAPTER_BUNDLE_BYTES = 300_000
TARGET_P99_MS = 10.0


def _digest(i: int) -> str:
    return f"{i:064x}"


def _name(i: int) -> str:
    return f"org{i % 97}/adapter-{i}"


def _record(i: int, now: float) -> dict[str, Any]:
    return {
        "digest": _digest(i),
        "size": ADAPTER_BUNDLE_BYTES,
        "num_params": ADAPTER_PARAMS,
        "reconstructed_nbytes": ADAPTER_PARAMS * 2,
        "stored_numbers": ADAPTER_PARAMS // 110,
        "mode": "delta",
        "base_sha256": "b" * 64,
        "base_name": "meta-llama/Llama-2-7b-hf",
        "created_at": now,
        "metadata_json": "{}",
        "verified_at": None,
    }


def fill(store: MetadataStore, rows: int) -> dict[str, float]:
    """Bulk-insert ``rows`` bundles and their tags (2-3 per name); returns rows/s and tag count."""
    now = time.time()
    t0 = time.perf_counter()
    n_tags = 0
    with store.engine.begin() as conn:
        for lo in range(0, rows, 5000):
            ids = range(lo, min(rows, lo + 5000))
            conn.execute(insert(bundles), [_record(i, now) for i in ids])
            tag_rows = []
            for i in ids:
                for t in ("v1", "v2", "main") if i % 3 == 0 else ("v1", "v2"):
                    tag_rows.append({"name": _name(i), "tag": t, "digest": _digest(i), "updated_at": now})
            conn.execute(insert(tags), tag_rows)
            n_tags += len(tag_rows)
    secs = time.perf_counter() - t0
    return {"bulk_rows_per_s": rows / secs, "tags": n_tags}


def pushes(store: MetadataStore, start: int, count: int) -> float:
    """``add_bundle`` with a tag, one transaction each (what a push does): bundles/s."""
    now = time.time()
    t0 = time.perf_counter()
    for i in range(start, start + count):
        rec = BundleRecord(**_record(i, now))
        store.add_bundle(rec, tag=(_name(i), "v1"), before_commit=lambda: None)
    return count / (time.perf_counter() - t0)


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {"p50_ms": statistics.median(ts), "p99_ms": ts[min(len(ts) - 1, int(len(ts) * 0.99))]}


def queries(rows: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """The reads measured, as SQL for EXPLAIN (what ``MetadataStore`` issues, parameters bound)."""
    i = rows // 2
    return {
        "resolve_tag": ("SELECT * FROM tags WHERE name = :n AND tag = :t", {"n": _name(i), "t": "v1"}),
        "tags_named": ("SELECT * FROM tags WHERE name = :n ORDER BY tag LIMIT 100", {"n": _name(i)}),
        "tags_for": ("SELECT * FROM tags WHERE digest = :d ORDER BY name, tag LIMIT 100", {"d": _digest(i)}),
        "list_page": ("SELECT * FROM tags ORDER BY name, tag LIMIT 50 OFFSET :o", {"o": rows}),
        "list_count": ("SELECT count(*) FROM tags", {}),
    }


def explain(store: MetadataStore, rows: int) -> dict[str, dict[str, Any]]:
    out = {}
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        for name, (sql, params) in queries(rows).items():
            plan = [" ".join(str(c) for c in row) for row in conn.execute(text(prefix + sql), params)]
            joined = " | ".join(plan)
            scan = ("SCAN tags" in joined and "USING" not in joined) or "Seq Scan on tags" in joined
            out[name] = {"plan": plan, "full_scan": scan}
    return out


def size_bytes(store: MetadataStore, sqlite_path: Path | None) -> int:
    if sqlite_path is not None:
        return sum(p.stat().st_size for p in sqlite_path.parent.glob(sqlite_path.name + "*"))
    with store.engine.connect() as conn:
        q = "SELECT " + " + ".join(f"pg_total_relation_size('{t}')" for t in ("bundles", "tags", "bases"))
        return int(conn.execute(text(q)).scalar_one())


def measure(store: MetadataStore, rows: int, pushes_n: int, samples: int, sqlite_path: Path | None) -> dict[str, Any]:
    res: dict[str, Any] = {"dialect": store.dialect, "rows": rows}
    res.update(fill(store, rows))
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    res["push_bundles_per_s"] = pushes(store, rows, pushes_n)
    rng = random.Random(0)
    pick = lambda: rng.randrange(rows)  # noqa: E731
    reads: dict[str, Callable[[], Any]] = {
        "resolve_tag": lambda: store.get_tag(_name(pick()), "v1"),
        "tags_named": lambda: store.tags_named(_name(pick()), limit=100),
        "tags_for": lambda: store.tags_for(_digest(pick()), limit=100),
        "list_page": lambda: store.list_tags(limit=50, offset=rng.randrange(2 * rows)),
    }
    for fn in reads.values():
        fn()  # warm up (connection pool, statement cache)
    res["reads"] = {name: timed(fn, samples) for name, fn in reads.items()}
    res["explain"] = explain(store, rows)
    res["size_bytes"] = size_bytes(store, sqlite_path)
    return res


def postgres_store(admin_url: str) -> tuple[MetadataStore, Callable[[], None]] | None:
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        db = f"mcnc_scale_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db}"'))
    except Exception as exc:  # no PostgreSQL here: said so, SQLite still measured
        print(f"# postgresql: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return None
    store = MetadataStore(admin_url.rsplit("/", 1)[0] + "/" + db, auto_upgrade=True)

    def drop() -> None:
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
        admin.dispose()

    return store, drop


def report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n{r['dialect']}: {r['rows']:,} bundles, {r['tags']:,} tags, metadata {r['size_bytes'] / 1e6:.1f} MB")
        push = f"push (add_bundle + tag) {r['push_bundles_per_s']:,.0f}/s"
        print(f"  bulk insert {r['bulk_rows_per_s']:,.0f} rows/s; {push}")
        for name, v in r["reads"].items():
            verdict = "ok" if v["p99_ms"] <= TARGET_P99_MS else "MISSES the 10 ms target"
            print(f"  {name:<12} p50 {v['p50_ms']:7.2f} ms  p99 {v['p99_ms']:7.2f} ms  {verdict}")
        for name, e in r["explain"].items():
            print(f"  EXPLAIN {name:<12} {'FULL SCAN' if e['full_scan'] else 'index'}: {' | '.join(e['plan'])[:160]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="metadata: 2,000 rows; fleet: 16 tiny adapters, 4 readers")
    p.add_argument("--parts", default="metadata,fleet", help="comma-separated: metadata, fleet")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--pushes", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres", help="'' to skip")
    p.add_argument("--json", type=Path)
    f = p.add_argument_group("fleet (benchmarks/registry_fleet.py)")
    f.add_argument("--fleet-n", type=int, default=None, help="adapters pushed (default 10,000; quick 16)")
    f.add_argument("--shape", choices=sorted(fleet.SHAPES), default=None, help="default llama2-7b; quick tiny")
    f.add_argument("--readers", type=int, default=None, help="concurrent readers (default 32; quick 4)")
    f.add_argument("--hot", type=int, default=None, help="repos fetched cold, then warm (default 64; quick 4)")
    f.add_argument("--warm-fetches", type=int, default=None, help="warm fetches per reader per round (default 4)")
    f.add_argument("--rounds", type=int, default=None, help="warm/nginx rounds, alternating (default 3; quick 2)")
    f.add_argument("--pushers", type=int, default=4, help="concurrent push clients")
    f.add_argument("--tag-pushes", type=int, default=1000, help="names whose v2/main go over HTTP; others inserted")
    f.add_argument("--client", choices=("socket", "httpx"), default="socket")
    f.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="the server's tier 2 ('' for none)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"metadata", "fleet"}:
        p.error(f"--parts takes metadata and/or fleet, got {args.parts!r}")
    rows = args.rows or (2_000 if args.quick else 100_000)
    pushes_n = args.pushes or (50 if args.quick else 500)
    samples = args.samples or (200 if args.quick else 2000)
    results: list[dict[str, Any]] = []
    fleet_out: dict[str, Any] | None = None
    if "metadata" in parts:
        with tempfile.TemporaryDirectory(prefix="mcnc-scale-") as tmp:
            path = Path(tmp) / "meta.sqlite"
            store = MetadataStore(f"sqlite:///{path}", auto_upgrade=True)
            try:
                results.append(measure(store, rows, pushes_n, samples, path))
            finally:
                store.close()
        pg = postgres_store(args.pg) if args.pg else None
        if pg is not None:
            store, drop = pg
            try:
                results.append(measure(store, rows, pushes_n, samples, None))
            finally:
                drop()
        report(results)
    if "fleet" in parts:
        q = args.quick
        args.fleet_n = args.fleet_n or (16 if q else 10_000)
        args.shape = args.shape or ("tiny" if q else "llama2-7b")
        args.readers = args.readers or (4 if q else 32)
        args.hot = args.hot or (4 if q else 64)
        args.warm_fetches = args.warm_fetches or (2 if q else 4)
        args.rounds = args.rounds or (2 if q else 3)
        with tempfile.TemporaryDirectory(prefix="mcnc-fleet-") as tmp:
            fleet_out = fleet.run(args, Path(tmp))
        fleet.report(fleet_out)
    if args.json:
        args.json.write_text(json.dumps({"metadata": results, "fleet": fleet_out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
