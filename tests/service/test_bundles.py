"""POST /bundles, GET|HEAD /bundles/{ref}, DELETE /bundles/{id}: storage, validation, ETag, Range."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app
from tests.service._helpers import error_code


def _leftovers(data_dir: Path) -> list[Path]:
    """Files under the store other than the SQLite database."""
    return [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("mcnc.sqlite3")]


def test_upload_is_idempotent_and_content_addressed(client, tiny, settings):
    r = client.post("/bundles", content=tiny.data)
    assert r.status_code == 201, r.text
    body = r.json()
    digest = hashlib.sha256(tiny.data).hexdigest()
    assert body["id"] == digest and body["digest"] == f"sha256:{digest}"
    assert body["size"] == len(tiny.data)
    assert body["num_params"] == tiny.bundle.num_params
    assert body["reconstructed_bytes"] == tiny.bundle.reconstructed_nbytes
    assert body["compression_ratio"] == pytest.approx(tiny.bundle.reconstructed_nbytes / len(tiny.data))
    assert body["mode"] == "full" and body["base"] is None
    again = client.post("/bundles", content=tiny.data)
    assert again.status_code == 200
    assert again.json()["id"] == digest and again.json()["created_at"] == body["created_at"]
    blob = settings.data_dir / "blobs" / "bundles" / digest
    assert blob.read_bytes() == tiny.data
    assert _leftovers(settings.data_dir) == [blob]


def test_upload_with_name_and_tag(client, tiny):
    r = client.post("/bundles", params={"name": "mlp", "tag": "v1"}, content=tiny.data)
    assert r.status_code == 201
    assert [(t["name"], t["tag"]) for t in r.json()["tags"]] == [("mlp", "v1")]
    client.post("/bundles", params={"name": "mlp"}, content=tiny.data)
    assert client.get("/models/mlp").json()["id"] == r.json()["id"]  # no tag -> latest
    assert client.get("/models/mlp:v1").json()["id"] == r.json()["id"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"name": "../etc"}, "invalid name"), ({"name": "a/b/c"}, "invalid name"), ({"name": "ok", "tag": "x/y"}, "tag")],
)
def test_names_with_path_characters_are_refused(client, tiny, settings, params, fragment):
    r = client.post("/bundles", params=params, content=tiny.data)
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert fragment in r.json()["error"]["message"]
    assert _leftovers(settings.data_dir) == []


def _mutations(data: bytes) -> dict[str, bytes]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    forged = dict(header)
    first = next(k for k in forged if k != "__metadata__")
    forged[first] = {**forged[first], "shape": [10**6, 10**6]}
    raw = json.dumps(forged).encode()
    raw += b" " * (-len(raw) % 8)
    return {
        "garbage": b"not a bundle at all",
        "truncated_header": data[:20],
        "truncated_data": data[:-4],
        "trailing_bytes": data + b"\0" * 8,
        "forged_shape": len(raw).to_bytes(8, "little") + raw + data[8 + n :],
        "huge_header_len": (1 << 40).to_bytes(8, "little") + data[8:],
        "plain_safetensors": _plain_safetensors(),
    }


def _plain_safetensors() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.zeros(3, 3)})


MUTATIONS = [
    "forged_shape",
    "garbage",
    "huge_header_len",
    "plain_safetensors",
    "trailing_bytes",
    "truncated_data",
    "truncated_header",
]


@pytest.mark.parametrize("case", MUTATIONS)
def test_malformed_bundles_are_refused_and_leave_nothing(client, tiny, settings, case):
    data = _mutations(tiny.data)[case]
    r = client.post("/bundles", params={"name": "bad"}, content=data)
    assert r.status_code == 422, (case, r.text)
    assert error_code(r) in {"invalid_bundle", "limit_exceeded"}
    assert _leftovers(settings.data_dir) == []
    assert client.get("/models").json()["total"] == 0


def _data_offset(data: bytes, tensor: int) -> int:
    """A byte inside the ``tensor``-th stored tensor (header order) of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begin, end = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")[tensor]
    return 8 + n + (begin + end) // 2 // 4 * 4 + 3  # the top byte (sign, exponent) of a float32


@pytest.mark.parametrize("tensor", [0, 1, 2, -1])
def test_bundles_failing_their_own_fingerprint_are_refused(client, tiny, settings, tensor):
    """Issue 11 D12: a bundle whose numbers were changed still parses (a "different bundle"); it was
    stored and its wrong weights served with 200. Now it is reconstructed and checked on upload."""
    data = bytearray(tiny.data)
    data[_data_offset(tiny.data, tensor)] ^= 0x3F  # the exponent of a code, scale or raw number
    r = client.post("/bundles", content=bytes(data))
    assert r.status_code == 422 and error_code(r) == "fingerprint_mismatch", r.text
    assert "fingerprint" in r.json()["error"]["message"]
    assert _leftovers(settings.data_dir) == []
    assert client.get("/models").json()["total"] == 0


def test_deferred_verification_runs_before_any_weight_byte(tmp_path, tiny):
    """Over ``verify_max_params`` (and for rows stored before verification existed) the bundle is
    stored unchecked; the first request for its weights checks it in full before answering."""
    bad = bytearray(tiny.data)
    bad[_data_offset(tiny.data, 0)] ^= 0x3F
    with TestClient(create_app(Settings(data_dir=tmp_path, verify_max_params=0))) as c:
        good_id = c.post("/bundles", params={"name": "good"}, content=tiny.data).json()["id"]
        assert c.post("/bundles", params={"name": "bad"}, content=bytes(bad)).status_code == 201
        store = c.app.state.store  # type: ignore[attr-defined]
        assert store.meta.get_bundle(good_id).verified_at is None
        for method in ("HEAD", "GET"):
            r = c.request(method, "/models/bad/weights")
            assert r.status_code == 422 and r.headers["x-error-code"] == "fingerprint_mismatch"
        assert c.get("/models/good/weights").status_code == 200
        assert store.meta.get_bundle(good_id).verified_at is not None
        assert c.get("/bundles/bad").status_code == 200  # the file itself is still what was uploaded


def test_empty_body_is_invalid_request(client):
    r = client.post("/bundles", content=b"")
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_upload_size_limit(tmp_path, tiny):
    settings = Settings(data_dir=tmp_path, max_upload_bytes=len(tiny.data) - 1)
    with TestClient(create_app(settings)) as c:
        r = c.post("/bundles", content=tiny.data)  # Content-Length declared: refused before reading
        assert r.status_code == 413 and error_code(r) == "payload_too_large"

        def chunks():  # no Content-Length: refused while streaming
            yield tiny.data[:1000]
            yield tiny.data[1000:]

        r = c.post("/bundles", content=chunks())
        assert r.status_code == 413 and error_code(r) == "payload_too_large"
    assert _leftovers(tmp_path) == []


def test_parameter_limit_is_422(tmp_path, tiny):
    with TestClient(create_app(Settings(data_dir=tmp_path, max_params=100))) as c:
        r = c.post("/bundles", content=tiny.data)
        assert r.status_code == 422 and error_code(r) == "limit_exceeded"
        assert "100" in r.json()["error"]["message"]
    assert _leftovers(tmp_path) == []


def test_delta_bundle_is_stored_without_its_base_and_its_weights_answer_409(client, delta):
    r = client.post("/bundles", params={"name": "d"}, content=delta.data)
    assert r.status_code == 201 and r.json()["base"] == delta.bundle.base.sha256
    for method in ("GET", "HEAD"):
        r = client.request(method, "/models/d/weights")
        assert r.status_code == 409 and r.headers["x-error-code"] == "base_missing"
    message = client.get("/models/d/weights").json()["error"]["message"]
    assert f"base sha256:{delta.bundle.base.sha256} (tiny-base)" in message and "POST /bases" in message
    assert client.get("/bundles/d").content == delta.data  # the bundle itself is served
    client.post("/bases", content=delta.base_file)
    assert client.get("/models/d/weights").status_code == 200


def test_get_and_head_bundle_with_etag_and_range(client, tiny):
    digest = client.post("/bundles", params={"name": "mlp"}, content=tiny.data).json()["id"]
    for ref in (digest, f"sha256:{digest}", "mlp", "mlp:latest"):
        r = client.get(f"/bundles/{ref}")
        assert r.status_code == 200 and r.content == tiny.data
        assert r.headers["etag"] == f'"{digest}"'
        assert r.headers["x-mcnc-bundle-digest"] == f"sha256:{digest}"
    assert "immutable" in client.get(f"/bundles/{digest}").headers["cache-control"]
    assert client.get("/bundles/mlp").headers["cache-control"] == "no-cache"
    h = client.head("/bundles/mlp")
    assert h.status_code == 200 and h.content == b"" and int(h.headers["content-length"]) == len(tiny.data)
    assert client.get("/bundles/mlp", headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    assert client.get("/bundles/mlp", headers={"If-None-Match": '"other"'}).status_code == 200
    r = client.get("/bundles/mlp", headers={"Range": "bytes=10-99"})
    assert r.status_code == 206 and r.content == tiny.data[10:100]
    assert r.headers["content-range"] == f"bytes 10-99/{len(tiny.data)}"
    r = client.get("/bundles/mlp", headers={"Range": "bytes=-16"})
    assert r.status_code == 206 and r.content == tiny.data[-16:]
    r = client.get("/bundles/mlp", headers={"Range": f"bytes={len(tiny.data)}-"})
    assert r.status_code == 416 and error_code(r) == "range_not_satisfiable"
    assert r.headers["content-range"] == f"bytes */{len(tiny.data)}"


@pytest.mark.parametrize("ref", ["nothere", "sha256:" + "0" * 64, "0" * 64])
def test_unknown_bundle_is_404(client, ref):
    r = client.get(f"/bundles/{ref}")
    assert r.status_code == 404 and error_code(r) == "bundle_not_found"


@pytest.mark.parametrize("ref", ["sha256:xyz", "bad..name:", "name:", ":tag", "-x"])
def test_bad_refs_are_400(client, ref):
    r = client.get(f"/bundles/{ref}")
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_delete_bundle_refused_while_named_unless_forced(client, tiny, settings):
    digest = client.post("/bundles", params={"name": "mlp"}, content=tiny.data).json()["id"]
    client.get("/models/mlp/weights")  # load it into tier 1
    r = client.delete(f"/bundles/{digest}")
    assert r.status_code == 409 and error_code(r) == "conflict" and "mlp:latest" in r.json()["error"]["message"]
    r = client.delete("/bundles/mlp")
    assert r.status_code == 400 and error_code(r) == "invalid_request"
    assert client.delete(f"/bundles/{digest}", params={"force": "true"}).status_code == 204
    assert client.get(f"/bundles/{digest}").status_code == 404
    assert client.get("/models/mlp").status_code == 404
    assert client.get("/models", params={"loaded": "true"}).json()["items"] == []
    assert _leftovers(settings.data_dir) == []
    r = client.delete(f"/bundles/{digest}")
    assert r.status_code == 404 and error_code(r) == "bundle_not_found"
    # and it can come back
    assert client.post("/bundles", content=tiny.data).status_code == 201
    assert client.delete(f"/bundles/{digest}").status_code == 204


def test_bundle_json_shows_the_x_metadata(client):
    # The golden bundle carries {"x-purpose": "golden test vector"} (issue 12: the server showed none).
    data = (Path(__file__).parents[1] / "data" / "golden_full_v2.mcnc").read_bytes()
    r = client.post("/bundles", params={"name": "golden", "tag": "v2"}, content=data)
    assert r.status_code == 201, r.text
    assert r.json()["metadata"] == {"x-purpose": "golden test vector"}
    assert client.get("/models/golden:v2").json()["metadata"] == {"x-purpose": "golden test vector"}
