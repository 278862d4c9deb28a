"""GET /models (paginated, ?loaded=true), GET /models/{ref}, DELETE /models/{ref}."""

from __future__ import annotations

from tests.service._helpers import error_code


def test_list_is_paginated_and_sorted(client, tiny, tiny2):
    d1 = client.post("/bundles", params={"name": "b", "tag": "v1"}, content=tiny.data).json()["id"]
    d2 = client.post("/bundles", params={"name": "a"}, content=tiny2.data).json()["id"]
    client.post("/bundles", params={"name": "b", "tag": "v2"}, content=tiny2.data)
    page = client.get("/models", params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [(i["name"], i["tag"], i["digest"]) for i in page["items"]] == [("a", "latest", d2), ("b", "v1", d1)]
    rest = client.get("/models", params={"limit": 2, "offset": 2}).json()
    assert [(i["name"], i["tag"]) for i in rest["items"]] == [("b", "v2")]
    r = client.get("/models", params={"limit": 0})
    assert r.status_code == 422 and error_code(r) == "invalid_request"


def test_retag_moves_the_name(client, tiny, tiny2):
    client.post("/bundles", params={"name": "m"}, content=tiny.data)
    d2 = client.post("/bundles", params={"name": "m"}, content=tiny2.data).json()["id"]
    assert client.get("/models/m").json()["id"] == d2
    assert client.get("/models").json()["total"] == 1


def test_model_metadata(client, tiny):
    digest = client.post("/bundles", params={"name": "m", "tag": "t"}, content=tiny.data).json()["id"]
    for ref in ("m:t", digest, f"sha256:{digest}"):
        info = client.get(f"/models/{ref}").json()
        assert info["id"] == digest and info["size"] == len(tiny.data)
        assert info["reconstructed_bytes"] == tiny.bundle.reconstructed_nbytes
        assert info["mode"] == "full" and info["loaded"] == []
        assert [(t["name"], t["tag"]) for t in info["tags"]] == [("m", "t")]
    r = client.get("/models/m")  # tag latest does not exist
    assert r.status_code == 404 and error_code(r) == "model_not_found"


def test_loaded_lists_tiers_bytes_and_last_use(client, tiny):
    digest = client.post("/bundles", params={"name": "m"}, content=tiny.data).json()["id"]
    assert client.get("/models", params={"loaded": "true"}).json() == {"items": []}
    client.get("/models/m/weights", params={"dtype": "float16"})
    items = client.get("/models", params={"loaded": "true"}).json()["items"]
    assert len(items) == 1
    item = items[0]
    assert item["digest"] == digest and item["dtype"] == "float16" and item["tier"] == "memory"
    assert item["bytes"] == tiny.bundle.num_params * 2 and item["tags"] == ["m:latest"] and item["last_used"] > 0
    assert client.get("/models/m").json()["loaded"] == ["memory"]


def test_delete_model_removes_only_the_tag(client, tiny):
    digest = client.post("/bundles", params={"name": "m", "tag": "t"}, content=tiny.data).json()["id"]
    r = client.delete("/models/m:t")
    assert r.status_code == 200 and r.json() == {"deleted": "m:t", "digest": f"sha256:{digest}"}
    assert client.get("/models/m:t").status_code == 404
    assert client.get(f"/models/{digest}").status_code == 200  # the bundle stays
    r = client.delete("/models/m:t")
    assert r.status_code == 404 and error_code(r) == "model_not_found"
    r = client.delete(f"/models/{digest}")
    assert r.status_code == 400 and error_code(r) == "invalid_request"


def test_huge_offsets_are_a_clear_4xx(client):
    r = client.get("/models", params={"offset": 10**30})  # was a 500 (OverflowError in SQLite): issue 11 D10
    assert r.status_code == 422 and error_code(r) == "invalid_request"
    assert client.get("/models", params={"offset": 2**31 - 1}).json()["items"] == []
