"""The pages' SQL on both databases (SQLite, the default, and PostgreSQL), and card sanitising."""

from __future__ import annotations

import time

import pytest

from service.storage import BaseRecord, BundleRecord, MetadataStore
from service.ui import queries
from service.ui.cards import render_card
from tests.service._backends import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def meta(request: pytest.FixtureRequest, tmp_path) -> MetadataStore:
    if request.param == "sqlite":
        store = MetadataStore(f"sqlite:///{tmp_path}/m.sqlite3", auto_upgrade=True)
        yield store
        store.close()
        return
    with fresh_postgres_database() as url:
        store = MetadataStore(url, auto_upgrade=True)
        yield store
        store.close()


def _add(meta: MetadataStore, digest: str, name: str, tag: str, *, size: int, base: str | None = None) -> None:
    rec = BundleRecord(digest, size, 10, size * 10, 5, "delta" if base else "full", base, "b" if base else None,
                       time.time())  # fmt: skip
    meta.add_bundle(rec, tag=(name, tag), before_commit=lambda: None)
    time.sleep(0.01)  # distinct push times


def test_models_orgs_bases_totals(meta: MetadataStore) -> None:
    a, b, c, base = "a" * 64, "b" * 64, "c" * 64, "d" * 64
    _add(meta, a, "acme/one", "v1", size=300)
    _add(meta, b, "acme/one", "v2", size=100)
    _add(meta, c, "zed/two_x", "v1", size=200, base=base)
    _add(meta, a, "plain", "latest", size=300)
    rows, total = queries.list_models(meta, q=None, org=None, sort="name", limit=10, offset=0)
    assert total == 3 and [(r.name, r.tag) for r in rows] == [
        ("acme/one", "v2"),
        ("plain", "latest"),
        ("zed/two_x", "v1"),
    ]
    assert rows[0].tag_count == 2 and rows[0].saving == 10
    rows, _ = queries.list_models(meta, q=None, org=None, sort="size", limit=10, offset=0)
    assert [r.name for r in rows] == ["plain", "zed/two_x", "acme/one"]
    rows, _ = queries.list_models(meta, q=None, org=None, sort="push", limit=1, offset=1)
    assert [r.name for r in rows] == ["zed/two_x"]
    assert queries.list_models(meta, q="_X", org=None, sort="name", limit=10, offset=0)[1] == 1  # "_" literal
    assert queries.list_models(meta, q="e%", org=None, sort="name", limit=10, offset=0)[1] == 0  # "%" literal
    assert queries.list_models(meta, q=None, org="acme", sort="name", limit=10, offset=0)[1] == 1
    assert queries.list_orgs(meta) == ["acme", "zed"]
    assert queries.head_tag(meta, "acme/one") == "v2"
    _add(meta, a, "acme/one", "main", size=300)
    time.sleep(0.01)
    _add(meta, b, "acme/one", "v3", size=100)
    assert queries.head_tag(meta, "acme/one") == "main"
    tags, n = queries.name_tags(meta, "acme/one", limit=2)
    assert n == 4 and [t.tag for t in tags] == ["v3", "main"]
    users, n = queries.base_users(meta, base, limit=10)
    assert n == 1 and users[0].name == "zed/two_x"
    meta.add_base(BaseRecord("e" * 64, "f" * 64, 50, 2, 9, time.time()), before_commit=lambda: None)
    rows_b = queries.base_rows(meta, limit=10)
    assert [(r.digest[0], r.registered, r.deltas) for r in rows_b] == [("e", True, 0), ("d", False, 1)]
    totals = queries.totals(meta)
    assert (totals.bundles, totals.bases, totals.names) == (3, 1, 3)
    assert totals.stored_bytes == 650 and totals.full_bytes == 6000


def test_cards_are_sanitised() -> None:
    html = render_card(
        "# T <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n![a](http://other/x.png) ![b](fig.png) "
        "![c](gone.png) [j](javascript:alert(1)) [ok](https://x.org)\n\n|a|b|\n|:-|-:|\n|1|2|",
        file_url=lambda n: f"/files/{n}" if n == "fig.png" else None,
    )
    assert "<script" not in html and "onerror" not in html.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html  # shown as text
    assert 'src="/files/fig.png"' in html and "http://other" not in html and "gone.png" not in html
    assert "javascript:" not in html.replace("[j](javascript:alert(1))", "") and "style=" not in html
    assert 'rel="noopener noreferrer nofollow"' in html
