"""``/docs`` without the internet, an OpenAPI spec that says what the routes take and return, and
multipart uploads refused with a message that says how to send the file."""

from __future__ import annotations

import re

import pytest

BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def test_docs_load_every_asset_from_this_server(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))]  # no CDN
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert "SwaggerUIBundle" in client.get("/docs-assets/swagger-ui-bundle.js").text


@pytest.mark.parametrize("path", ["/models/{ref}/weights", "/bundles/{ref}", "/bases/{digest}"])
def test_downloads_are_documented_as_octet_streams(client, path):
    responses = client.get("/openapi.json").json()["paths"][path]["get"]["responses"]
    assert responses["200"]["content"] == responses["206"]["content"] == BINARY


@pytest.mark.parametrize("path", ["/bundles", "/bases"])
def test_uploads_document_their_raw_body(client, path):
    body = client.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]
    assert body["required"] is True and body["content"] == BINARY and "--data-binary" in body["description"]


def test_bearer_scheme_on_every_route_that_takes_a_token(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "a token from MCNC_API_TOKENS"}  # fmt: skip
    assert spec["paths"]["/models/{ref}/weights"]["get"]["security"] == [{"bearer": []}]
    assert spec["paths"]["/bundles"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health/live"]["get"]


@pytest.mark.parametrize(("path", "what"), [("/bundles?name=mlp", "bundle file"), ("/bases", "safetensors file")])
def test_multipart_uploads_get_415_saying_to_send_the_raw_file(client, tiny, path, what):
    r = client.post(path, files={"file": ("model.mcnc", tiny.data)})
    assert r.status_code == 415 and r.headers["x-error-code"] == "unsupported_media_type"
    assert (
        f"send the {what} itself" in r.json()["error"]["message"]
        and "--data-binary @file" in r.json()["error"]["message"]
    )
