"""The store contract: every (metadata, blob) implementation behaves the same — SQLite + files, PostgreSQL + S3.

Each test runs on both (``backend_settings``); the PostgreSQL database is created for the run and the
S3 server is moto's on loopback (a real boto3 client speaking the S3 protocol). Concurrency cases
run real threads against the stores: the invariants are checked after every round.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from service.config import Settings
from service.errors import BaseNotFoundError, BundleNotFoundError, ConflictError, StorageUnavailableError
from service.storage import BaseRecord, BundleRecord, FileBlobStore, Ref, Staged, Store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[Store]:
    s = Store.open(backend_settings)
    yield s
    s.close()


def _staged(store: Store, data: bytes) -> Staged:
    staged = store.stage()
    staged.write(data)
    staged.finish()
    return staged


def _record(data: bytes, **kw: object) -> BundleRecord:
    fields: dict[str, object] = dict(
        digest=hashlib.sha256(data).hexdigest(), size=len(data), num_params=10, reconstructed_nbytes=40,
        stored_numbers=3, mode="full", base_sha256=None, base_name=None, created_at=time.time(),
    )  # fmt: skip
    fields.update(kw)
    return BundleRecord(**fields)  # type: ignore[arg-type]


def _add(store: Store, data: bytes, tag: tuple[str, str] | None = None) -> tuple[BundleRecord, bool]:
    staged = _staged(store, data)
    try:
        return store.add_bundle(staged, _record(data), tag=tag)
    finally:
        staged.discard()


def test_bundles_are_content_addressed_and_idempotent(store):
    rec, created = _add(store, b"one" * 100, ("m", "v1"))
    assert created and store.meta.get_bundle(rec.digest) == rec
    again, created = _add(store, b"one" * 100)
    assert not created and again == rec  # the first upload's record
    assert store.bundle_bytes(rec.digest) == b"one" * 100
    assert b"".join(store.open_bundle(rec.digest, 3, 9)) == (b"one" * 100)[3:9]
    assert store.meta.get_bundle("00" * 32) is None and store.meta.resolve(Ref(digest="00" * 32)) is None
    assert store.meta.resolve(Ref(name="m", tag="v1")) == rec.digest


def test_tags_move_list_and_delete(store):
    a, _ = _add(store, b"a" * 50, ("org/m", "v1"))
    b, _ = _add(store, b"b" * 50, ("org/m", "v2"))
    _add(store, b"b" * 50, ("org/m", "v1"))  # move v1 to b
    assert store.meta.get_tag("org/m", "v1").digest == b.digest
    assert [t.tag for t in store.meta.tags_for(b.digest)] == ["v1", "v2"] and store.meta.tags_for(a.digest) == []
    assert [t.tag for t in store.meta.tags_named("org/m")] == ["v1", "v2"]
    for i in range(5):
        _add(store, b"a" * 50, (f"n{i}", "t"))
    page, total = store.meta.list_tags(limit=3, offset=2)
    assert total == 7 and [(t.name, t.tag) for t in page] == [("n2", "t"), ("n3", "t"), ("n4", "t")]
    removed = store.meta.delete_tag("org/m", "v2")
    assert removed is not None and removed.digest == b.digest
    assert store.meta.delete_tag("org/m", "v2") is None and store.meta.get_tag("org/m", "v2") is None


def test_delete_refuses_named_bundles_unless_forced(store):
    rec, _ = _add(store, b"x" * 64, ("m", "latest"))
    with pytest.raises(BundleNotFoundError):
        store.delete_bundle("00" * 32, force=True)
    with pytest.raises(ConflictError, match="m:latest"):
        store.delete_bundle(rec.digest, force=False)
    assert store.meta.get_bundle(rec.digest) is not None and store.blobs.exists("bundles", rec.digest)
    store.delete_bundle(rec.digest, force=True)
    assert store.meta.get_bundle(rec.digest) is None and store.meta.get_tag("m", "latest") is None
    assert not store.blobs.exists("bundles", rec.digest)
    with pytest.raises(BundleNotFoundError):
        store.open_bundle(rec.digest, 0, 1)
    with pytest.raises(BundleNotFoundError):
        store.bundle_bytes(rec.digest)


def test_bases_and_their_local_copies(store):
    data = os.urandom(70_000)
    rec = BaseRecord("cd" * 32, hashlib.sha256(data).hexdigest(), len(data), 2, 100, time.time())
    staged = _staged(store, data)
    try:
        assert store.add_base(staged, rec) == (rec, True)
        assert store.add_base(staged, rec)[1] is False
    finally:
        staged.discard()
    assert store.meta.get_base(rec.digest) == rec
    assert b"".join(store.open_base(rec.digest, 0, len(data))) == data
    path = store.base_file(rec)
    assert path.read_bytes() == data and store.base_file(rec) == path  # downloaded once
    forged = BaseRecord(rec.digest, "00" * 32, *tuple(vars(rec).values())[2:])
    if store.blobs.local_file("bases", rec.digest) is None:  # a download is checked against its sha256
        path.unlink()
        with pytest.raises(StorageUnavailableError, match="does not hash"):
            store.base_file(forged)
    with pytest.raises(BaseNotFoundError):
        store.base_file(BaseRecord("ef" * 32, *tuple(vars(rec).values())[1:]))


def test_large_blobs_round_trip_and_ranges_stream(store):
    data = os.urandom(11 << 20)  # over the S3 store's 5 MiB multipart size here: uploaded in parts
    rec, _ = _add(store, data)
    assert store.bundle_bytes(rec.digest) == data
    reader = store.open_bundle(rec.digest, 5_000_000, 7_000_001)
    pieces = list(reader)
    assert len(pieces) > 1 and b"".join(pieces) == data[5_000_000:7_000_001]  # streamed, not one buffer


def _break_halfway(store: Store, staged: Staged, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make the next put of ``staged`` fail half-way: S3 after its first multipart part has been read,
    the file store after half the copy was written (hard links made unavailable). Counts the reads."""
    calls = {"n": 0}
    if isinstance(store.blobs, FileBlobStore):

        def no_link(*_args: object) -> None:
            raise OSError("no hard links on this filesystem")

        def half_copy(src: str, dst: str) -> None:
            calls["n"] += 2
            with builtins.open(src, "rb") as f_in, builtins.open(dst, "wb") as f:
                f.write(f_in.read(1 << 20))
            raise OSError("the disk is full")

        monkeypatch.setattr(os, "link", no_link)
        monkeypatch.setattr(shutil, "copyfile", half_copy)
        return calls
    real_open = builtins.open

    def failing_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        if str(path) == str(staged.path) and "r" in mode:
            real_read = f.read

            def read(n=-1):
                calls["n"] += 1
                if calls["n"] > 1:
                    raise OSError("the disk went away")
                return real_read(n)

            f.read = read
        return f

    monkeypatch.setattr(builtins, "open", failing_open)
    return calls


def test_an_interrupted_put_leaves_no_object(store, monkeypatch):
    data = os.urandom(11 << 20)
    digest = hashlib.sha256(data).hexdigest()
    staged = _staged(store, data)
    calls = _break_halfway(store, staged, monkeypatch)
    with pytest.raises(StorageUnavailableError):
        store.blobs.put("bundles", digest, staged)
    monkeypatch.undo()
    staged.discard()
    assert calls["n"] > 1  # the failure really came mid-way
    assert not store.blobs.exists("bundles", digest)
    with pytest.raises(BundleNotFoundError):
        store.open_bundle(digest, 0, 1)
    if isinstance(store.blobs, FileBlobStore):
        assert list((store.blobs.root / ".incoming").iterdir()) == []


def _together(*fns: Callable[[], None]) -> list[BaseException]:
    """Run ``fns`` in threads released at the same moment; the exceptions they raised."""
    barrier = threading.Barrier(len(fns))
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def _upload(store: Store, data: bytes, tag: tuple[str, str]) -> Callable[[], None]:
    staged = _staged(store, data)  # received before the race starts, as a request body would be

    def upload() -> None:
        try:
            store.add_bundle(staged, _record(data), tag=tag)
        finally:
            staged.discard()

    return upload


def test_two_uploads_of_one_name_tag(store):
    for round_ in range(8):
        datas = [os.urandom(2000) for _ in range(2)]
        assert _together(*(_upload(store, d, ("race", "latest")) for d in datas)) == [], round_
        winner = store.meta.get_tag("race", "latest")
        assert winner is not None and winner.digest in {hashlib.sha256(d).hexdigest() for d in datas}
        assert [t.tag for t in store.meta.tags_named("race")] == ["latest"]
        for d in datas:  # both stored, whole
            assert store.bundle_bytes(hashlib.sha256(d).hexdigest()) == d


def test_delete_racing_an_upload_of_the_same_bytes_never_leaves_a_row_without_its_blob(store):
    data = os.urandom(4000)
    digest = hashlib.sha256(data).hexdigest()
    _add(store, data, ("r", "latest"))

    def delete() -> None:
        with contextlib.suppress(BundleNotFoundError):  # the upload had not re-created it yet: a clean 404
            store.delete_bundle(digest, force=True)

    for round_ in range(12):
        assert _together(delete, _upload(store, data, ("r", "latest"))) == [], round_
        has_row = store.meta.get_bundle(digest) is not None
        assert has_row == store.blobs.exists("bundles", digest), round_
        if has_row:
            assert store.bundle_bytes(digest) == data
        else:
            _add(store, data, ("r", "latest"))


def test_delete_during_a_read_finishes_the_read_and_refuses_later_ones(store):
    data = os.urandom(3 << 20)
    rec, _ = _add(store, data, ("m", "latest"))
    reader = store.open_bundle(rec.digest, 0, len(data))
    first = next(reader)
    store.delete_bundle(rec.digest, force=True)
    assert first + b"".join(reader) == data  # opened before the delete: read to its end
    with pytest.raises(BundleNotFoundError):
        store.open_bundle(rec.digest, 0, len(data))


def test_ping_and_closed_store(backend_settings):
    s = Store.open(backend_settings)
    s.ping()
    s.close()
    with pytest.raises(StorageUnavailableError):
        s.ping()
