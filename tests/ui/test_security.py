"""Pages on a server with read tokens: the token form once, an HttpOnly SameSite=Strict cookie, the
form's CSRF checks, and the API's Host/Origin rules on the pages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from service import Settings
from service.ui.security import CSP, CSRF_COOKIE, TOKEN_COOKIE
from tests._live import LiveServer
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.e2e
TOKENS = {"reader-token": ["read"], "writer-token": ["write"]}


@pytest.fixture(scope="module")
def tokened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("ui-tokens"), redis_url=None, api_tokens=json.dumps(TOKENS))
    with LiveServer(settings) as srv:
        yield srv.url


def _form(url: str, path: str = "/ui/models/x") -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=url, timeout=10)
    r = client.get(path)
    assert r.status_code == 401 and r.headers["content-security-policy"] == CSP
    return client, re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)  # type: ignore[union-attr]


def test_browser_gives_the_token_once_and_keeps_it_in_a_strict_cookie(browser: object, tokened: str) -> None:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(tokened + "/ui/bases")
    screenshot(page, "token")
    page.fill("input[name=token]", "nope")
    page.click("form.token button")
    assert page.locator("#problem").inner_text() == "unknown token"
    page.fill("input[name=token]", "reader-token")
    page.click("form.token button")
    assert page.url == tokened + "/ui/bases" and page.locator("h1").inner_text() == "Bases"
    (cookie,) = [c for c in context.cookies() if c["name"] == TOKEN_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.goto(tokened + "/")
    assert page.locator("h1").inner_text() == "Models"
    page.click("form.logout button")
    assert page.locator("h1").inner_text() == "This server needs a token"
    context.close()


def test_token_form_refuses_forged_posts(tokened: str) -> None:
    client, csrf = _form(tokened)
    form = {"csrf": csrf, "token": "reader-token", "next": "/ui/bases"}
    other = httpx.post(tokened + "/ui/token", data=form, cookies={CSRF_COOKIE: csrf}, timeout=10,
                       headers={"Origin": "http://evil.example"})  # fmt: skip
    assert other.status_code == 403 and other.json()["error"]["code"] == "cross_origin"
    wrong = client.post("/ui/token", data={**form, "csrf": "guess"})
    assert wrong.status_code == 403 and TOKEN_COOKIE not in wrong.cookies
    client, csrf = _form(tokened)  # the refusal set a fresh CSRF value
    ok = client.post("/ui/token", data={**form, "csrf": csrf, "next": "//evil.example/x"})
    assert ok.status_code == 303 and ok.headers["location"] == "/"  # never another site
    assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
    assert client.get("/ui/bases").status_code == 200
    # the cookie opens the pages only: the API still wants the bearer header
    assert client.get("/models").status_code == 401


def test_token_without_read_scope_is_refused(tokened: str) -> None:
    client, csrf = _form(tokened)
    r = client.post("/ui/token", data={"csrf": csrf, "token": "writer-token"})
    assert r.status_code == 303  # write implies read
    client, csrf = _form(tokened)
    assert client.post("/ui/token", data={"csrf": csrf, "token": "x" * 20}).status_code == 401


def test_pages_follow_the_host_rule(registry: object) -> None:
    url = registry.url  # type: ignore[attr-defined]
    r = httpx.get(url + "/", headers={"Host": "rebind.example"}, timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
