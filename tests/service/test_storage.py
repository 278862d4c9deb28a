"""LocalStore and refs: parsing, temp-file hygiene, atomic commits, tags."""

from __future__ import annotations

import hashlib

import pytest

from service.errors import InvalidRequestError
from service.storage import LocalStore, Ref, parse_ref

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


def test_stale_temp_files_are_removed_at_start(tmp_path):
    LocalStore(tmp_path).close()
    stale = tmp_path / "tmp" / "upload-crashed.tmp"
    stale.write_bytes(b"half")
    LocalStore(tmp_path).close()
    assert not stale.exists()


def test_commit_is_a_rename_and_discard_removes(tmp_path):
    store = LocalStore(tmp_path)
    tmp = store.temp_blob()
    tmp.write(b"hello")
    digest = tmp.finish()
    assert digest == hashlib.sha256(b"hello").hexdigest()
    dest = store.commit_blob("bundles", tmp, digest)
    tmp.discard()  # after the rename: a no-op
    assert dest.read_bytes() == b"hello" and list((tmp_path / "tmp").iterdir()) == []
    other = store.temp_blob()
    other.write(b"x")
    other.discard()
    assert list((tmp_path / "tmp").iterdir()) == []
    store.close()
