"""``POST /bases?name=org/base&file=<filename>:<sha256>`` over real HTTP on loopback: a base registered
under a repo name with its sidecar files in one transaction, names that move, and every refusal
(409 for a bundle repo's name, 400 for files not uploaded, bad names, file= without name) leaving
nothing registered."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
import torch
from safetensors.torch import save

from service import Settings
from service.hub.revisions import resolve
from service.storage import commit_id
from tests._live import LiveServer
from tests.service._helpers import error_code

CONFIG = b'{"model_type": "llama", "hidden_size": 64}'
README = b"# acme/base\n\nA tiny base.\n"


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[LiveServer, httpx.Client]]:
    settings = Settings(data_dir=tmp_path / "data", redis_url=None, api_tokens=None)
    with LiveServer(settings) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        yield srv, http


def _upload(http: httpx.Client, data: bytes) -> str:
    r = http.post("/files", content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
    return str(r.json()["sha256"])


def _post_base(http: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return http.post("/bases", params=params, content=data, headers={"Content-Type": "application/octet-stream"})


def test_named_base_with_files_is_a_hub_repo(live, delta):
    srv, http = live
    cfg, card = _upload(http, CONFIG), _upload(http, README)
    r = _post_base(http, delta.base_file, name="acme/base", file=[f"config.json:{cfg}", f"README.md:{card}"])
    assert r.status_code == 201, r.text
    body = r.json()
    digest = delta.bundle.base.sha256
    assert body["digest"] == digest and body["name"] == "acme/base"
    files = [("README.md", card), ("config.json", cfg)]
    assert body["commit"] == commit_id(digest, files)
    assert [(f["name"], f["sha256"], f["size"]) for f in body["files"]] == [
        ("README.md", card, len(README)),
        ("config.json", cfg, len(CONFIG)),
    ]
    store = srv.app.state.store
    assert store.meta.base_by_name("acme/base").digest == digest
    rev = resolve(store, "acme/base", None)  # what every Hub route asks
    assert rev.kind == "base" and rev.digest == digest and rev.commit == body["commit"]
    assert {f.name: store.file_bytes(f.sha256) for f in rev.files} == {"config.json": CONFIG, "README.md": README}
    assert http.get(f"/bases/{digest}").content == delta.base_file  # the bytes as uploaded
    # the same tensors and files again: 200, the same commit
    again = _post_base(http, delta.base_file, name="acme/base", file=[f"config.json:{cfg}", f"README.md:{card}"])
    assert again.status_code == 200 and again.json()["commit"] == body["commit"]
    # a base registered without a name has none in its record
    plain = _post_base(http, delta.base_file)
    assert plain.status_code == 200 and plain.json()["name"] is None and plain.json()["files"] == []


def test_registering_a_name_again_moves_it_and_replaces_its_files(live, delta):
    srv, http = live
    cfg = _upload(http, CONFIG)
    first = _post_base(http, delta.base_file, name="acme/base", file=f"config.json:{cfg}").json()
    other = save({k: v + 1 for k, v in delta.base.items()})
    moved = _post_base(http, other, name="acme/base")
    assert moved.status_code == 201, moved.text
    assert moved.json()["digest"] != first["digest"] and moved.json()["files"] == []
    store = srv.app.state.store
    assert store.meta.base_by_name("acme/base").digest == moved.json()["digest"]
    assert store.meta.base_files("acme/base") == []  # the files went with the old registration
    assert store.meta.base_names(first["digest"]) == []  # still stored, no longer under that name
    assert http.head(f"/bases/{first['digest']}").status_code == 200
    # one base under two names
    _post_base(http, other, name="acme/base-copy")
    assert store.meta.base_names(moved.json()["digest"]) == ["acme/base", "acme/base-copy"]


def test_a_bundle_repo_name_is_refused_and_nothing_is_registered(live, delta, tiny):
    srv, http = live
    up = http.post("/bundles", params={"name": "acme/m", "tag": "v1"}, content=tiny.data)
    assert up.status_code == 201, up.text
    r = _post_base(http, delta.base_file, name="acme/m")
    assert r.status_code == 409 and error_code(r) == "conflict"
    assert "bundle repo" in r.json()["error"]["message"] and "another name" in r.json()["error"]["message"]
    assert http.head(f"/bases/{delta.bundle.base.sha256}").status_code == 404  # not registered either
    assert srv.app.state.store.meta.base_name("acme/m") is None
    # and the other way round: a base's name takes no bundle tags
    assert _post_base(http, delta.base_file, name="acme/base").status_code == 201
    r = http.post("/bundles", params={"name": "acme/base", "tag": "v1"}, content=tiny.data)
    assert r.status_code == 409 and error_code(r) == "conflict"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"name": "acme/base", "file": "config.json:" + "e" * 64}, "POST /files first"),
        ({"file": "config.json:" + "e" * 64}, "file= given without name"),
        ({"name": "acme/base", "file": "config.json"}, "<filename>:<sha256>"),
        ({"name": "acme/base", "file": "model.safetensors:" + "e" * 64}, "generated by the server"),
        ({"name": "acme/base", "file": "dir/config.json:" + "e" * 64}, "no folders"),
        ({"name": "Acme Base"}, "name"),
        ({"name": "a/b/c"}, "name"),
    ],
)
def test_bad_names_and_files_are_400_naming_the_fix(live, delta, params, needle):
    _srv, http = live
    r = _post_base(http, delta.base_file, **params)
    assert r.status_code == 400, r.text
    assert error_code(r) == "invalid_request" and needle in r.json()["error"]["message"]
    assert http.head(f"/bases/{delta.bundle.base.sha256}").status_code == 404


def test_a_file_given_twice_is_refused(live, delta):
    _srv, http = live
    cfg = _upload(http, CONFIG)
    r = _post_base(http, delta.base_file, name="acme/base", file=[f"config.json:{cfg}", f"config.json:{cfg}"])
    assert r.status_code == 400 and "given twice" in r.json()["error"]["message"]


def test_a_malformed_base_with_a_name_registers_nothing(live):
    srv, http = live
    for data in (b"junk", save({"w": torch.zeros(2)})[:-3]):
        r = _post_base(http, data, name="acme/base")
        assert r.status_code == 422 and error_code(r) == "invalid_base"
    assert srv.app.state.store.meta.base_name("acme/base") is None


@pytest.fixture(params=["sqlite", "postgres"])
def meta(request, tmp_path):
    from service.storage import MetadataStore

    url = f"sqlite:///{tmp_path / 'm.sqlite3'}" if request.param == "sqlite" else request.getfixturevalue("postgres")
    store = MetadataStore(url, auto_upgrade=True)
    yield store
    store.close()


def test_add_base_with_a_name_is_one_transaction(meta):
    """The storage call behind the route, on SQLite and PostgreSQL: a refused name leaves no base row."""
    import time

    from service.errors import ConflictError, InvalidRequestError
    from service.storage import BaseRecord, BundleRecord, FileRecord

    sha = hashlib.sha256(CONFIG).hexdigest()
    meta.add_file(FileRecord("", sha, len(CONFIG), "0" * 40), before_commit=lambda: None)
    bundle = BundleRecord("a" * 64, 1, 1, 4, 1, "full", None, None, time.time())
    meta.add_bundle(bundle, tag=("acme/m", "v1"), before_commit=lambda: None)
    base = BaseRecord("b" * 64, "c" * 64, 10, 1, 1, time.time())
    with pytest.raises(ConflictError, match="bundle repo"):
        meta.add_base(base, before_commit=lambda: None, name="acme/m")
    with pytest.raises(InvalidRequestError, match="POST /files first"):
        meta.add_base(base, before_commit=lambda: None, name="acme/base", files={"config.json": "e" * 64})
    assert meta.get_base(base.digest) is None and meta.base_name("acme/base") is None
    assert meta.add_base(base, before_commit=lambda: None, name="acme/base", files={"config.json": sha}) == (base, True)
    named = meta.base_name("acme/base")
    assert named.digest == base.digest and named.commit == commit_id(base.digest, [("config.json", sha)])
    assert [(f.name, f.size) for f in meta.base_files("acme/base")] == [("config.json", len(CONFIG))]


def test_sidecar_bytes_by_sha256_get_and_head(live, delta):
    """``GET|HEAD /files/{sha256}``: what a client asks before uploading (404 then), and the bytes."""
    _srv, http = live
    sha = hashlib.sha256(CONFIG).hexdigest()
    missing = http.head(f"/files/{sha}")
    assert missing.status_code == 404
    r = http.get(f"/files/{sha}")
    assert r.status_code == 404 and error_code(r) == "file_not_found" and "POST /files" in r.json()["error"]["message"]
    _upload(http, CONFIG)
    for ref in (sha, f"sha256:{sha}"):
        r = http.get(f"/files/{ref}")
        assert r.status_code == 200 and r.content == CONFIG and r.headers["etag"] == f'"{sha}"'
    h = http.head(f"/files/{sha}")
    assert h.status_code == 200 and int(h.headers["content-length"]) == len(CONFIG) and h.content == b""
    assert http.get(f"/files/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304
    part = http.get(f"/files/{sha}", headers={"Range": "bytes=2-5"})
    assert part.status_code == 206 and part.content == CONFIG[2:6]
    assert http.get("/files/not-a-sha").status_code == 404
