"""The Hub listing's reads at fleet scale: p50/p99 of each keyset query at 100,000 names, SQLite and PostgreSQL.

Fills a fresh store exactly as ``benchmarks/registry_scale.py`` does (its ``fill``: ``--rows``
delta bundles under as many names ``org<i%97>/adapter-<i>``, 2-3 tags each), then times what
``GET /api/models``, ``/refs`` and ``/commits`` ask ``MetadataStore`` (``service/storage/listing.py``),
on random names, against the target p99 <= 10 ms, and prints each query's plan (``EXPLAIN``):

- ``list_first`` / ``list_page`` / ``list_desc``: a page of 50 ids (first, after a random id,
  descending after a random id); ``author``: a page of one org's ids after a random id of that org
  (a client's cursor); ``author_first``: an org's first page;
- ``search_many``: ``search=adapter-1`` (a page of matches is found early);
  ``search_one``: ``search=adapter-<i>`` of one random name (few match: the name index is read through);
- ``refs``: a name's tags with commits; ``history``: ``commits/main`` (distinct commits, newest first);
- ``offset_page``: the old ``list_tags`` page (``OFFSET`` at a random row and ``count(*)``), for comparison.

    python benchmarks/hub_listing_scale.py            # 100,000 rows
    python benchmarks/hub_listing_scale.py --quick    # 2,000 rows
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.dialects import postgresql, sqlite  # noqa: E402

from benchmarks.registry_scale import TARGET_P99_MS, _name, fill, postgres_store, timed  # noqa: E402
from service.storage.metadata import MetadataStore  # noqa: E402

PAGE = 50


def reads(store: MetadataStore, rows: int, rng: random.Random) -> dict[str, Callable[[], Any]]:
    pick = lambda: _name(rng.randrange(rows))  # noqa: E731
    last: list[str] = []

    def org_of(name: str) -> str:  # remembers the name: the cursor is inside that org, as a client's is
        last[:] = [name]
        return name.partition("/")[0]

    def pick_in_org() -> str:
        return last[0]

    meta = store
    return {
        "list_first": lambda: meta.list_repos(limit=PAGE),
        "list_page": lambda: meta.list_repos(limit=PAGE, after=pick()),
        "list_desc": lambda: meta.list_repos(limit=PAGE, after=pick(), descending=True),
        "author": lambda: meta.list_repos(limit=PAGE, author=org_of(pick()), after=pick_in_org()),
        "author_first": lambda: meta.list_repos(limit=PAGE, author=f"org{rng.randrange(97)}"),
        "search_many": lambda: meta.list_repos(limit=PAGE, search="adapter-1"),
        "search_one": lambda: meta.list_repos(limit=PAGE, search=pick().partition("/")[2]),
        "refs": lambda: meta.tag_commits(pick(), limit=10_000),
        "history": lambda: meta.repo_history(pick(), limit=PAGE),
        "offset_page": lambda: meta.list_tags(limit=PAGE, offset=rng.randrange(2 * rows)),
    }


def plans(store: MetadataStore, rows: int) -> dict[str, list[str]]:
    """EXPLAIN of the listing statement (a page after an id; a search; an org's page) and of the
    history, as compiled for the dialect with the parameters bound."""
    from sqlalchemy import select

    from service.storage.listing import _list_statement
    from service.storage.schema import tags

    name = _name(rows // 2)
    cases = {
        "page": (_list_statement(True, False, False, False, True), {"after": name}),
        "search": (_list_statement(False, False, True, False, True), {"pattern": "%adapter-7%"}),
        "author": (
            _list_statement(True, False, False, True, store._bytewise_names()),
            {"after": name, "org": "org5/", "org_like": "org5/%", "org_end": "org50"},
        ),
        "history": (select(tags.c.commit).where(tags.c.name == name).group_by(tags.c.commit), {}),
    }
    dialect = postgresql.dialect() if store.dialect == "postgresql" else sqlite.dialect()
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    out = {}
    with store.engine.connect() as conn:
        for label, (q, params) in cases.items():
            bound = q.params(limit=PAGE, **params) if params or label != "history" else q
            sql = str(bound.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            out[label] = [" ".join(str(c) for c in r) for r in conn.execute(text(prefix + sql))]
    return out


def measure(store: MetadataStore, rows: int, samples: int) -> dict[str, Any]:
    res: dict[str, Any] = {"dialect": store.dialect, "rows": rows}
    res.update(fill(store, rows))
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    rng = random.Random(0)
    fns = reads(store, rows, rng)
    for fn in fns.values():
        fn()  # warm up
    res["reads"] = {name: timed(fn, samples) for name, fn in fns.items()}
    res["explain"] = plans(store, rows)
    return res


def report(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n{r['dialect']}: {r['rows']:,} names, {r['tags']:,} tags")
        for name, v in r["reads"].items():
            verdict = "ok" if v["p99_ms"] <= TARGET_P99_MS else "MISSES the 10 ms target"
            print(f"  {name:<12} p50 {v['p50_ms']:7.2f} ms  p99 {v['p99_ms']:7.2f} ms  {verdict}")
        for name, plan in r["explain"].items():
            on_tags = [ln.strip() for ln in plan if " tags" in ln or "base_names" in ln]  # the scans that matter
            print(f"  EXPLAIN {name:<8} {' | '.join(on_tags)[:300]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 rows, 200 samples per read")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres", help="'' to skip")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    rows = args.rows or (2_000 if args.quick else 100_000)
    samples = args.samples or (200 if args.quick else 1000)
    results = []
    with tempfile.TemporaryDirectory(prefix="mcnc-hublist-") as tmp:
        store = MetadataStore(f"sqlite:///{Path(tmp) / 'meta.sqlite'}", auto_upgrade=True)
        try:
            results.append(measure(store, rows, samples))
        finally:
            store.close()
    pg = postgres_store(args.pg) if args.pg else None
    if pg is not None:
        store, drop = pg
        try:
            results.append(measure(store, rows, samples))
        finally:
            drop()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
