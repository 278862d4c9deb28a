"""Refs, staging hygiene, atomic file puts, store URLs the server refuses (the contract suite: test_contract.py)."""

from __future__ import annotations

import hashlib

import pytest

from service.config import Settings
from service.errors import InvalidRequestError, StoreConfigError
from service.storage import LocalBlobCache, MetadataStore, Ref, Staged, Store, local_cache, open_blob_store, parse_ref

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        (HEX, Ref(digest=HEX)),
        (HEX.upper(), Ref(digest=HEX)),
        (f"sha256:{HEX}", Ref(digest=HEX)),
        ("mlp", Ref(name="mlp", tag="latest")),
        ("mlp:v1.2", Ref(name="mlp", tag="v1.2")),
        ("org.model_x-1:2024-01", Ref(name="org.model_x-1", tag="2024-01")),
    ],
)
def test_parse_ref(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize(
    "text",
    ["", "..", ".hidden", "a/b/c", "a/resolve", "/b", "a\\b", "a:b:c", "a:", ":b", "sha256:abc", "a b", "x" * 200, "é"],
)
def test_parse_ref_rejects(text):
    with pytest.raises(InvalidRequestError):
        parse_ref(text)


def test_stale_staging_and_partial_puts_are_removed_at_start(tmp_path):
    settings = Settings(data_dir=tmp_path)
    Store.open(settings).close()
    stale = [tmp_path / "tmp" / "upload-crashed.tmp", tmp_path / "blobs" / ".incoming" / "0123abcd"]
    for path in stale:
        path.write_bytes(b"half")
    Store.open(settings).close()
    assert not any(p.exists() for p in stale)


def test_file_put_is_atomic_and_keeps_the_staged_file(tmp_path):
    store = Store.open(Settings(data_dir=tmp_path))
    staged = store.stage()
    staged.write(b"hello")
    digest = staged.finish()
    assert digest == hashlib.sha256(b"hello").hexdigest()
    store.blobs.put("bundles", digest, staged)
    assert staged.path.read_bytes() == b"hello"  # still usable: a racing delete may need a second put
    staged.discard()
    assert (tmp_path / "blobs" / "bundles" / digest).read_bytes() == b"hello"
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "blobs" / ".incoming").iterdir()) == []
    assert b"".join(store.blobs.open_range("bundles", digest, 1, 4)) == b"ell"
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "scheme must be file:// or s3://"),
        ("file://relative/dir", "expected file:///absolute/path"),
        ("s3://", "expected s3://bucket"),
    ],
)
def test_bad_blob_urls_are_refused(url, message):
    with pytest.raises(StoreConfigError, match=message):
        open_blob_store(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "not supported"),
        ("postgresql+nosuchdriver://h/db", "not usable"),
        ("not a url", "not usable"),
    ],
)
def test_bad_database_urls_are_refused(url, message):
    with pytest.raises(StoreConfigError, match=message):
        MetadataStore(url, auto_upgrade=True)


def test_local_copies_of_remote_blobs_stay_within_their_budget(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    monkeypatch.setattr(local_cache, "_IN_USE_S", 0.0)  # every copy is old enough to go
    blobs = open_blob_store(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    cache = LocalBlobCache(blobs, tmp_path / "cache", budget=150_000)
    staging = tmp_path / "staging"
    staging.mkdir()
    files = {}
    for i in range(3):
        data = bytes([i]) * 100_000
        staged = Staged(staging)
        staged.write(data)
        digest = staged.finish()
        blobs.put("bases", digest, staged)
        staged.discard()
        files[digest] = data
    paths = []
    for digest, data in files.items():
        paths.append(cache.path("bases", digest, sha256=digest))
        assert paths[-1].read_bytes() == data
    assert [p.exists() for p in paths] == [False, False, True]  # only the newest fits 150 kB
    assert sum(f.stat().st_size for f in (tmp_path / "cache").iterdir()) <= 150_000
    again = cache.path("bases", next(iter(files)), sha256=next(iter(files)))  # evicted: downloaded again
    assert again.read_bytes() == next(iter(files.values()))
    blobs.close()


def test_a_copy_just_handed_out_is_not_removed(tmp_path, s3_endpoint, s3_bucket):
    blobs = open_blob_store(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint)
    cache = LocalBlobCache(blobs, tmp_path / "cache", budget=1)
    paths = []
    for i in range(2):
        staged = Staged(tmp_path)
        staged.write(bytes([i]) * 1000)
        digest = staged.finish()
        blobs.put("bases", digest, staged)
        staged.discard()
        paths.append(cache.path("bases", digest, sha256=digest))
    assert all(p.exists() for p in paths)  # over budget for a minute rather than pulled from under a reader
    blobs.close()
