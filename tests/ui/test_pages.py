"""The pages in headless Chromium against a live server: list, search, pages, model and base pages,
hostile metadata that must not run, and no request leaving the server."""

from __future__ import annotations

import re

import httpx
import pytest

from service.ui.security import CSP
from tests.ui.conftest import HOSTILE, PAGED, Registry, Watched, screenshot

pytestmark = pytest.mark.e2e
TIMES = "\u00d7"  # the saving column's sign


def _rows(page: object) -> list[str]:
    return page.locator("table.models tbody a.model").all_inner_texts()  # type: ignore[attr-defined]


def _only_this_server(w: Watched, registry: Registry) -> None:
    outside = [u for u in w.requests if not u.startswith(registry.url + "/")]
    assert not outside, outside
    assert not w.dialogs and not w.errors, (w.dialogs, w.errors)


def test_list_shows_models_sizes_and_savings(watched: Watched, registry: Registry) -> None:
    page = watched.page
    page.goto(registry.url + "/?limit=100")
    names = _rows(page)
    assert {"acme/mlp", "team/mlp-ft", "acme/llama-lora", *PAGED} == set(names)
    row = page.locator("tr", has=page.locator("a.model", has_text="acme/llama-lora"))
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == "latest" and cells[2] == "delta on tiny-llama"
    assert re.fullmatch(r"[0-9.,]+\u00d7", cells[5]) and float(cells[5].rstrip(TIMES).replace(",", "")) > 1
    mlp = page.locator("tr", has=page.locator("a.model", has_text="acme/mlp")).first.locator("td").all_inner_texts()
    assert mlp[1] == "v2" and mlp[2] == "full" and "(2 tags)" in mlp[0]
    assert page.locator("svg[role=img] rect.bar").count() == 2  # the server-wide picture
    assert TIMES in page.locator("#server-saving").inner_text()
    screenshot(page, "models")
    _only_this_server(watched, registry)


def test_search_org_sort_and_pagination(watched: Watched, registry: Registry) -> None:
    page = watched.page
    page.goto(registry.url + "/")
    page.fill("input[name=q]", "LORA")
    page.click("form.filters button")
    assert _rows(page) == ["acme/llama-lora"]
    page.fill("input[name=q]", "")
    page.select_option("select[name=org]", "acme")
    page.select_option("select[name=sort]", "name")
    page.click("form.filters button")
    assert _rows(page) == ["acme/llama-lora", "acme/mlp"]
    page.goto(registry.url + "/?sort=name&limit=4")
    first = _rows(page)
    assert len(first) == 4 and first == sorted(first)
    assert page.locator("#page-info").inner_text().startswith("1\u20134 of 10")
    seen = list(first)
    while page.locator("a[rel=next]").count():
        page.click("a[rel=next]")
        seen += _rows(page)
    assert seen == sorted(seen) and len(seen) == 10 == len(set(seen))
    page.click("a[rel=prev]")
    assert _rows(page) == seen[4:8]
    _only_this_server(watched, registry)


def test_model_page_shows_config_tags_files_and_hostile_metadata_as_text(watched: Watched, registry: Registry) -> None:
    page = watched.page
    response = page.goto(registry.url + "/ui/models/acme/mlp")
    assert response.headers["content-security-policy"] == CSP
    assert page.locator("h1").first.inner_text() == "acme/mlp:v2"  # the most recent tag (no tag named main)
    assert page.locator("#metadata").inner_text().count(HOSTILE) == 1  # shown as text
    assert page.locator("#metadata img, #metadata script").count() == 0
    config = page.locator("#config").inner_text()
    assert "k (code size)\t4" in config and "d (chunk size)\t64" in config and "version 2" in config
    assert page.locator("#tags tbody tr").count() == 2
    for link in page.locator("#files a").all():
        href = link.get_attribute("href")
        assert httpx.head(registry.url + href, timeout=60).status_code == 200, href
    card = page.locator("#card")
    assert card.locator("h1").inner_text() == "The acme MLP" and card.locator("em").inner_text() == "mnist1d"
    assert card.locator("script, img[onerror], [onerror]").count() == 0  # sanitized: nothing of it runs
    page.goto(registry.url + "/ui/models/acme/mlp?tag=v1")
    assert "No model card" in page.locator("#card").inner_text()
    page.goto(registry.url + "/ui/models/acme/mlp")
    screenshot(page, "model-full")
    page.goto(registry.url + "/ui/models/acme/llama-lora?tag=v1")
    assert "rank\t8" in page.locator("#config").inner_text()
    assert "not registered on this server" in page.locator("#lineage").inner_text()
    assert page.locator("#snippets pre").count() == 6  # load, pull-peft, snapshot, peft, vllm, lorax
    screenshot(page, "model-delta")
    _only_this_server(watched, registry)


def test_bases_and_base_page(watched: Watched, registry: Registry) -> None:
    page = watched.page
    page.goto(registry.url + "/ui/bases")
    text = page.locator("table.bases").inner_text()
    assert "mlp-base" in text and "tiny-llama" in text and "not registered" in text
    screenshot(page, "bases")
    page.goto(f"{registry.url}/ui/bases/{registry.base_digest.removeprefix('sha256:')}")
    assert "registered" in page.locator(".lead").inner_text()
    assert page.locator("main table tbody a").first.inner_text() == "team/mlp-ft"
    screenshot(page, "base")
    _only_this_server(watched, registry)


def test_unknown_pages_are_404_pages(registry: Registry) -> None:
    for path in ("/ui/models/nobody/here", "/ui/models/acme/mlp?tag=v9", "/ui/bases/" + "0" * 64, "/ui/bases/x"):
        r = httpx.get(registry.url + path, timeout=10)
        assert r.status_code == 404 and "Not found" in r.text and r.headers["content-security-policy"] == CSP
    assert httpx.get(registry.url + "/?sort=bogus", timeout=10).status_code == 422
    assert httpx.get(registry.url + "/ui/static/../main.py", timeout=10).status_code == 404
