"""Hub repo storage on SQLite and PostgreSQL: sidecar files per tag, the commit ids they define, the
``main`` rule, bases under repo names, and the backfill of commit ids for rows older than 0004."""

from __future__ import annotations

import hashlib
import time

import pytest

from service.errors import ConflictError, InvalidRequestError
from service.storage import BaseRecord, BundleRecord, FileRecord, MetadataStore, commit_id


@pytest.fixture(params=["sqlite", "postgres"])
def meta(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    store = MetadataStore(url, auto_upgrade=True)
    yield store
    store.close()


def _bundle(meta: MetadataStore, n: int, tag: tuple[str, str], files: dict[str, str] | None = None) -> str:
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    rec = BundleRecord(digest, 1, 1, 4, 1, "full", None, None, time.time())
    meta.add_bundle(rec, tag=tag, before_commit=lambda: None, files=files)
    return digest


def test_files_define_the_commit_and_main_follows_pushes(meta):
    sha = hashlib.sha256(b"{}").hexdigest()
    assert meta.add_file(FileRecord("", sha, 2, "0" * 40), before_commit=lambda: None)
    with pytest.raises(InvalidRequestError, match="POST /files first"):
        _bundle(meta, 1, ("acme/m", "v1"), {"config.json": "f" * 64})
    d1 = _bundle(meta, 1, ("acme/m", "v1"), {"config.json": sha})
    assert [(f.name, f.size) for f in meta.tag_files("acme/m", "v1")] == [("config.json", 2)]
    tag = meta.get_tag("acme/m", "v1")
    assert tag.commit == commit_id(d1, [("config.json", sha)]) != commit_id(d1, []) and len(tag.commit) == 40
    assert meta.tag_by_commit("acme/m", tag.commit).tag == "v1"
    d2 = _bundle(meta, 2, ("acme/m", "v2"))
    assert meta.main_tag("acme/m").digest == d2  # the newest push
    _bundle(meta, 1, ("acme/m", "main"))
    _bundle(meta, 3, ("acme/m", "v3"))
    assert meta.main_tag("acme/m").tag == "main"  # an explicit main wins
    _bundle(meta, 1, ("acme/m", "v1"))  # a push without files replaces the tag's files
    assert meta.tag_files("acme/m", "v1") == [] and meta.get_tag("acme/m", "v1").commit == commit_id(d1, [])
    meta.delete_tag("acme/m", "v1")
    assert meta.tag_files("acme/m", "v1") == []


def test_bases_under_repo_names_and_name_conflicts(meta):
    base = BaseRecord("b" * 64, "c" * 64, 10, 1, 1, time.time())
    meta.add_base(base, before_commit=lambda: None)
    named = meta.set_base_name("acme/base", base.digest, {})
    assert named.commit == commit_id(base.digest, []) and meta.base_names(base.digest) == ["acme/base"]
    assert meta.base_by_name("acme/base").digest == base.digest and meta.base_by_name("acme/x") is None
    with pytest.raises(ConflictError, match="registered base"):
        _bundle(meta, 1, ("acme/base", "v1"))
    _bundle(meta, 1, ("acme/m", "v1"))
    with pytest.raises(ConflictError, match="bundle repo"):
        meta.set_base_name("acme/m", base.digest, {})
    rows = meta.list_repo_names(limit=10, search="ACME")
    assert [(n, k) for n, k, _ in rows] == [("acme/base", "bases"), ("acme/m", "bundles")]
    assert [n for n, _, _ in meta.list_repo_names(limit=10, after="acme/base")] == ["acme/m"]
